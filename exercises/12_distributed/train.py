"""Data-parallel training on the CPU: every process trains the same model on its own shard.

    python train.py --nproc 2                            # starts 2 processes itself
    torchrun --standalone --nproc-per-node 2 train.py    # or: torchrun starts them
    python train.py --nproc 4 --epochs 10 --batch-size 16

Each process (a "rank") sees 1/N of the training data per epoch. DistributedDataParallel
averages the gradients over the ranks at every step, so that every copy of the model takes
the same step and stays the same. Rank 0 prints the validation metrics and writes
runs/model.pt beside this script.
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp import LOOPBACK, LOOPBACK_INTERFACE, free_port, make_loader, save_checkpoint, setup
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

RUNS = Path(__file__).resolve().parent / "runs"  # what the script writes, wherever it runs


@dataclass
class Config:
    epochs: int = 5
    batch_size: int = 32  # per rank: one step learns from batch_size * world_size samples
    lr: float = 0.1
    seed: int = 0
    timeout: float = 60.0  # seconds a rank waits for the others before it gives up
    out: Path = RUNS


def make_model(in_features: int = 2, hidden: int = 32, num_classes: int = 4) -> nn.Module:
    """A small MLP: (B, in_features) points in, (B, num_classes) logits out."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def make_data(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Four overlapping Gaussian blobs in the plane: 512 training and 256 validation points."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])
    y = torch.randint(4, (768,), generator=g)  # (N,)
    x = centres[y] + 1.0 * torch.randn(768, 2, generator=g)  # (N, 2)
    return TensorDataset(x[:512], y[:512]), TensorDataset(x[512:], y[512:])


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    epoch: int) -> float:
    """One pass over this rank's shard, in the order of ``epoch``; this rank's mean loss."""
    model.train()
    total, count = 0.0, 0
    for x, y in loader:  # (B, 2), (B,)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()  # DDP averages the gradients over the ranks during backward
        optimizer.step()
        total, count = total + loss.item() * len(y), count + len(y)
    return total / count


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Mean loss and accuracy over the whole validation set: the shards of all ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count on this rank
    for x, y in loader:
        logits = model(x)  # (B, C)
        sums += torch.tensor([nn.functional.cross_entropy(logits, y, reduction="sum").item(),
                              (logits.argmax(dim=1) == y).sum().item(), len(y)],
                             dtype=torch.float64)
    loss_sum, correct, count = sums.tolist()
    return loss_sum / count, correct / count


def run(cfg: Config) -> dict:
    """The program of one rank: join the group, train, validate, save, leave the group."""
    rank, world_size = setup(cfg.timeout)
    torch.manual_seed(cfg.seed)
    train_set, val_set = make_data(cfg.seed)
    train_loader = make_loader(train_set, cfg.batch_size, rank, world_size, seed=cfg.seed)
    val_loader = make_loader(val_set, 128, rank, world_size, shuffle=False)
    model = DistributedDataParallel(make_model())  # copies rank 0's initial weights to all
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    for epoch in range(cfg.epochs):
        train_one_epoch(model, train_loader, optimizer, epoch)
        val_loss, val_accuracy = evaluate(model, val_loader)
        if rank == 0:
            print(f"epoch {epoch + 1}/{cfg.epochs}: validation loss {val_loss:.4f}, "
                  f"accuracy {val_accuracy:.1%} ({world_size} processes)", flush=True)
    checkpoint = save_checkpoint(model, Path(cfg.out) / "model.pt")
    print(f"saved {checkpoint}", flush=True)
    return {"val_loss": val_loss, "val_accuracy": val_accuracy, "checkpoint": checkpoint}


def _launched(rank: int, world_size: int, cfg: Config) -> None:
    """Entry point of one process started by launch(): its place in the group goes into the
    environment, where run() finds it just as it finds what torchrun sets."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    run(cfg)


def launch(nproc: int, cfg: Config) -> None:
    """Start ``nproc`` ranks on this machine, each running run(cfg); wait for all of them.

    If one rank fails, the others are stopped and its error is raised here.
    """
    os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(free_port()))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)  # this machine only
    # "spawn" starts each rank in a fresh interpreter: it works on every OS (fork does not)
    mp.start_processes(_launched, args=(nproc, cfg), nprocs=nproc, start_method="spawn")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> dict | None:
    cfg = Config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=positive_int, default=2,
                        help="processes to start; ignored under torchrun (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=cfg.epochs,
                        help="default: %(default)s")
    parser.add_argument("--batch-size", type=positive_int, default=cfg.batch_size,
                        help="per process (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=cfg.lr, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=cfg.seed, help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=cfg.timeout,
                        help="seconds a process waits for the others (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RUNS,
                        help="folder for model.pt (default: runs/ beside this script)")
    args = parser.parse_args(argv)
    if not args.lr > 0:
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    cfg = Config(args.epochs, args.batch_size, args.lr, args.seed, args.timeout, args.out)
    if "RANK" in os.environ:  # started by torchrun: this process is one rank of the group
        return run(cfg)
    launch(args.nproc, cfg)
    return None


if __name__ == "__main__":
    main()
