"""Train a CNN on corrupted (rotated) MNIST digits, and evaluate a saved checkpoint.

    python main.py train                      # writes runs/model.pt and runs/training_curve.png
    python main.py evaluate                   # prints the test accuracy of runs/model.pt
    python main.py train --dataset mnist --download   # torchvision's MNIST (or fashionmnist)
"""

import argparse
import pickle
import re
import sys
from pathlib import Path

import torch
from data import load
from model import Net
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

RUNS = Path(__file__).resolve().parent / "runs"  # what the commands write, wherever they run


def fit(model: nn.Module, loader: DataLoader, epochs: int, lr: float,
        device: torch.device) -> list[float]:
    """Train ``model`` with Adam and cross-entropy; returns the loss of every step."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(epochs):
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not sys.stderr.isatty())
        for x, y in bar:
            x, y = x.to(device), y.to(device)  # (B, 1, 28, 28), (B,)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Fraction of the loader's images that ``model`` classifies correctly."""
    was_training = model.training  # restored at the end: the caller may go on training
    model.to(device)
    correct = total = 0
    for x, y in loader:
        predictions = model(x.to(device)).argmax(dim=1).cpu()  # (B,)
        correct += (predictions == y).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / total


def plot_curve(losses: list[float], path: str | Path) -> None:
    """Save the training curve (step vs loss) as an image file."""
    import matplotlib

    matplotlib.use("Agg")  # draw to a file; no window, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(losses)
    ax.set(xlabel="step", ylabel="training loss", title="Training curve")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s learned weights to ``path``, in a file that holds tensors only."""
    torch.save(model, path)


def load_checkpoint(path: str | Path, device: torch.device) -> Net:
    """A Net with the weights saved at ``path``, refusing files that hold more than tensors.

    Raises ValueError, saying why, for a file that is not such a checkpoint.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused what the file holds
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise ValueError(f"{path} holds a pickled Python object ({found.group(1)}), not "
                             f"only tensors: save the model's state_dict()") from None
        raise ValueError(f"{path} is not a file that torch.save wrote") from None
    except Exception:  # noqa: BLE001 - truncated, or not torch.save's format at all
        raise ValueError(f"{path} is damaged, or not a file that torch.save wrote") from None
    model = Net()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:  # another model's, or no dict
        raise ValueError(f"{path} does not hold a state_dict of this Net "
                         f"({' '.join(str(exc).split())[:150]}...)") from None
    return model.to(device)


def train(args: argparse.Namespace) -> None:
    """``python main.py train``: fit a fresh Net, save its weights and its training curve."""
    torch.manual_seed(args.seed)
    train_set, _ = load(args.dataset, args.data_dir, args.n_train, args.n_test, args.download)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    model = Net()
    losses = fit(model, loader, args.epochs, args.lr, args.device)
    for path in (args.checkpoint, args.figure):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, args.checkpoint)
    plot_curve(losses, args.figure)
    print(f"saved the model to {args.checkpoint} and its training curve to {args.figure}")


def evaluate(args: argparse.Namespace) -> float:
    """``python main.py evaluate [model.pt]``: print the test accuracy of a saved checkpoint."""
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"main.py evaluate: no checkpoint at {args.checkpoint} "
                         f"(run `python main.py train` first)")
    try:
        model = load_checkpoint(args.checkpoint, args.device)
    except ValueError as exc:
        raise SystemExit(f"main.py evaluate: {exc}") from None
    _, test_set = load(args.dataset, args.data_dir, args.n_train, args.n_test, args.download)
    result = accuracy(model, DataLoader(test_set, batch_size=1000), args.device)
    print(f"test accuracy: {result:.2%} of {len(test_set)} images, model {args.checkpoint}")
    return result


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", choices=["corrupt", "mnist", "fashionmnist"],
                        default="corrupt", help="default: %(default)s (offline)")
    common.add_argument("--download", action="store_true",
                        help="download mnist / fashionmnist if missing (needs internet)")
    common.add_argument("--data-dir", default=str(RUNS.parent / "data"),
                        help="where torchvision's data sets are; default: %(default)s")
    common.add_argument("--n-train", type=positive, help="use only this many training images")
    common.add_argument("--n-test", type=positive, help="use only this many test images")
    common.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit_args = commands.add_parser("train", parents=[common], help="train and save a model")
    fit_args.add_argument("--epochs", type=positive, default=5, help="default: %(default)s")
    fit_args.add_argument("--lr", type=float, default=1e-3, help="default: %(default)s")
    fit_args.add_argument("--batch-size", type=positive, default=64, help="default: %(default)s")
    fit_args.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    fit_args.add_argument("--checkpoint", default=str(RUNS / "model.pt"),
                          help="default: %(default)s")
    fit_args.add_argument("--figure", default=str(RUNS / "training_curve.png"),
                          help="default: %(default)s")
    eval_args = commands.add_parser("evaluate", parents=[common], help="print test accuracy")
    eval_args.add_argument("checkpoint", nargs="?", default=str(RUNS / "model.pt"),
                           help="a file written by `main.py train`; default: %(default)s")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available on this machine")
    if args.command == "train" and not args.lr > 0:
        parser.error(f"--lr must be a positive number, got {args.lr}")
    args.device = torch.device(args.device)
    try:
        train(args) if args.command == "train" else evaluate(args)
    except FileNotFoundError as exc:  # a torchvision data set that is not there
        raise SystemExit(f"main.py {args.command}: {exc}") from None


if __name__ == "__main__":
    main()
