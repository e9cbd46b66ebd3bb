"""Train a small classifier with a checkpoint after every epoch; run it again to resume.

    python train.py --epochs 3              # trains 3 epochs, writes runs/checkpoint.pt
    python train.py --epochs 6              # resumes after epoch 3 and trains 3 more
    python train.py --epochs 6 --fresh      # deletes the checkpoint and starts over
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from checkpoint import load_checkpoint, save_checkpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

RUNS = Path(__file__).resolve().parent / "runs"  # what the script writes, wherever it runs


@dataclass
class Config:
    epochs: int = 6
    lr: float = 1e-2
    batch_size: int = 32
    checkpoint: str = str(RUNS / "checkpoint.pt")
    seed: int = 0


def make_model(in_features: int = 2, num_classes: int = 3) -> nn.Module:
    """A small MLP: (B, in_features) points in, (B, num_classes) logits out."""
    return nn.Sequential(nn.Linear(in_features, 64), nn.ReLU(), nn.Linear(64, num_classes))


def make_data(seed: int = 0) -> TensorDataset:
    """Three Gaussian blobs in the plane, 200 points each."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=600, centers=3, cluster_std=2.0, random_state=seed)
    return TensorDataset(torch.from_numpy(x).float(), torch.from_numpy(y).long())


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, epochs: int,
        checkpoint: str | Path, device: str | torch.device = "cpu") -> list[float]:
    """Train until ``epochs`` epochs are complete in total, resuming from ``checkpoint``.

    If the checkpoint file exists, training continues where it stopped; a checkpoint is
    written after every epoch. Returns the mean loss of each epoch this call ran.
    """
    model.to(device)
    start = 0
    if Path(checkpoint).exists():
        start = load_checkpoint(checkpoint, model, optimizer, device)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(start, epochs):
        model.train()
        total, seen = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)  # (B, 2), (B,)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(x), seen + len(x)
        history.append(total / seen)
        save_checkpoint(checkpoint, model, optimizer, epoch=epoch + 1)
        print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}")
    return history


def main(argv: list[str] | None = None) -> None:
    cfg = Config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in vars(cfg).items():
        parser.add_argument(f"--{name}", type=type(value), default=value,
                            help="default: %(default)s")
    parser.add_argument("--fresh", action="store_true", help="delete the checkpoint first")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available on this machine")
    if args.fresh:
        Path(args.checkpoint).unlink(missing_ok=True)
    Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    loader = DataLoader(make_data(args.seed), batch_size=args.batch_size, shuffle=True)
    model = make_model().to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    try:
        fit(model, optimizer, loader, args.epochs, args.checkpoint, args.device)
    except ValueError as exc:  # a checkpoint that cannot be resumed from
        raise SystemExit(f"train.py: {exc}; delete it or pass --fresh") from None
    print(f"checkpoint after {args.epochs} epochs: {Path(args.checkpoint).resolve()}")


if __name__ == "__main__":
    main()
