"""Train a CNN on corrupted (rotated) MNIST digits, and evaluate a saved checkpoint.

    python main.py train                      # writes model.pt and training_curve.png
    python main.py evaluate model.pt          # prints the test accuracy
    python main.py train --dataset mnist      # torchvision's MNIST (or fashionmnist), online
"""

import argparse

import torch
from data import load
from model import Net
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


def fit(model: nn.Module, loader: DataLoader, epochs: int, lr: float,
        device: torch.device) -> list[float]:
    """Train ``model`` with Adam and cross-entropy; returns the loss of every step."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(epochs):
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}")
        for x, y in bar:
            x, y = x.to(device), y.to(device)  # (B, 1, 28, 28), (B,)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Fraction of the loader's images that ``model`` classifies correctly."""
    model.to(device).eval()
    correct = total = 0
    for x, y in loader:
        predictions = model(x.to(device)).argmax(dim=1).cpu()  # (B,)
        correct += (predictions == y).sum().item()
        total += len(y)
    return correct / total


def plot_curve(losses: list[float], path: str) -> None:
    """Save the training curve (step vs loss) as an image file."""
    import matplotlib

    matplotlib.use("Agg")  # draw to a file; no window, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(losses)
    ax.set(xlabel="step", ylabel="training loss", title="Training curve")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_checkpoint(model: nn.Module, path: str) -> None:
    """Write ``model``'s learned weights to ``path``, in a file that holds tensors only."""
    torch.save(model.state_dict(), path)


def load_checkpoint(path: str, device: torch.device) -> Net:
    """A Net with the weights saved at ``path``, refusing files that hold more than tensors."""
    model = Net()
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model.to(device)


def train(args: argparse.Namespace) -> None:
    """``python main.py train``: fit a fresh Net, save its weights and its training curve."""
    torch.manual_seed(args.seed)
    train_set, _ = load(args.dataset, args.data_dir, args.n_train, args.n_test)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    model = Net()
    losses = fit(model, loader, args.epochs, args.lr, args.device)
    save_checkpoint(model, args.checkpoint)
    plot_curve(losses, args.figure)
    print(f"saved the model to {args.checkpoint} and its training curve to {args.figure}")


def evaluate(args: argparse.Namespace) -> float:
    """``python main.py evaluate model.pt``: print the test accuracy of a saved checkpoint."""
    model = load_checkpoint(args.checkpoint, args.device)
    _, test_set = load(args.dataset, args.data_dir, args.n_train, args.n_test)
    result = accuracy(model, DataLoader(test_set, batch_size=1000), args.device)
    print(f"test accuracy: {result:.2%}")
    return result


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", choices=["corrupt", "mnist", "fashionmnist"],
                        default="corrupt", help="default: %(default)s (offline)")
    common.add_argument("--data-dir", default="data", help="where torchvision's data sets go")
    common.add_argument("--n-train", type=int, help="use only this many training images")
    common.add_argument("--n-test", type=int, help="use only this many test images")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit_args = commands.add_parser("train", parents=[common], help="train and save a model")
    fit_args.add_argument("--epochs", type=int, default=5, help="default: %(default)s")
    fit_args.add_argument("--lr", type=float, default=1e-3, help="default: %(default)s")
    fit_args.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    fit_args.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    fit_args.add_argument("--checkpoint", default="model.pt", help="default: %(default)s")
    fit_args.add_argument("--figure", default="training_curve.png", help="default: %(default)s")
    eval_args = commands.add_parser("evaluate", parents=[common], help="print test accuracy")
    eval_args.add_argument("checkpoint", help="a file written by `main.py train`")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    main()
