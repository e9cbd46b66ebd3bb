"""A reusable training loop: epochs of updates, validation, a learning-rate schedule, and
early stopping that hands back the best weights.

    python train.py                          # two moons, at most 60 epochs, stops early
    python train.py --patience 0 --plot no_early_stop.png

The loss curves go to runs/curves.png beside this script unless --plot says otherwise.
"""

import argparse
from pathlib import Path

import torch
from early_stopping import EarlyStopping
from model import SmallNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

RUNS = Path(__file__).resolve().parent / "runs"  # what the script writes, whatever the cwd


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, loss_fn,
                    device: str | torch.device = "cpu") -> float:
    """One pass of updates over ``loader`` (batches of (x, y)).

    Returns the mean loss per sample over the epoch, as a Python float.
    """
    total_loss, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)  # (B, F), (B,)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total_loss += loss * len(x)  # sum of per-sample losses
        count += len(x)
    return total_loss / count


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn,
             device: str | torch.device = "cpu") -> tuple[float, float]:
    """Mean loss per sample and accuracy over ``loader``, in eval mode, without gradients."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)  # (B, C)
        total_loss += loss_fn(logits, y).item() * len(x)
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(x)
    return total_loss / count, correct / count


def fit(model: nn.Module, train_loader, val_loader, optimizer: torch.optim.Optimizer,
        epochs: int = 20, loss_fn=None, scheduler=None, patience: int | None = None,
        device: str | torch.device = "cpu", verbose: bool = False) -> dict[str, list[float]]:
    """Train for up to ``epochs`` epochs, validating after each one.

    ``scheduler`` (any torch.optim.lr_scheduler) is stepped once per epoch. With a
    ``patience``, training stops after that many epochs without a better validation loss,
    and the model is left with the weights of its best epoch.

    Returns the history: per epoch, "train_loss", "val_loss", "val_accuracy" and "lr".
    """
    model.to(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    stopper = EarlyStopping(patience) if patience else None
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": [],
                                       "lr": []}
    for epoch in range(epochs):
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        train_loss = train_one_epoch(model, train_loader, optimizer, loss_fn, device)
        val_loss, val_accuracy = evaluate(model, val_loader, loss_fn, device)
        for key, value in zip(history, (train_loss, val_loss, val_accuracy, lr)):
            history[key].append(value)
        if verbose:
            print(f"epoch {epoch + 1:3d}  lr {lr:.2e}  train loss {train_loss:.4f}  "
                  f"val loss {val_loss:.4f}  val accuracy {val_accuracy:.1%}")
        if stopper is not None and stopper.step(val_loss, model):
            if verbose:
                print(f"no improvement for {patience} epochs: stopping")
            break
    if stopper is not None:
        stopper.restore(model)
        if verbose:
            print(f"restored the weights of epoch {stopper.best_epoch + 1}")
    return history


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=60, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=0.05, help="default: %(default)s")
    parser.add_argument("--patience", type=int, default=8, help="0: never stop early")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda if available (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=RUNS / "curves.png",
                        help="where to save the loss curves (default: runs/curves.png)")
    args = parser.parse_args(argv)
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.patience < 0:
        parser.error(f"--patience must be 0 or more, got {args.patience}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available here")
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")

    from sklearn.datasets import make_moons

    torch.manual_seed(0)
    x, y = make_moons(n_samples=1200, noise=0.25, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    train = DataLoader(TensorDataset(x[:1000], y[:1000]), batch_size=50, shuffle=True)
    val = DataLoader(TensorDataset(x[1000:], y[1000:]), batch_size=200)
    model = SmallNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    history = fit(model, train, val, optimizer, epochs=args.epochs, scheduler=scheduler,
                  patience=args.patience, device=device, verbose=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(range(1, len(history["train_loss"]) + 1), history["train_loss"], label="train")
    ax.plot(range(1, len(history["val_loss"]) + 1), history["val_loss"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot)
    plt.close(fig)
    print(f"saved the loss curves to {args.plot}")
    return history


if __name__ == "__main__":
    main()
