"""The distributed plumbing of a data-parallel run: the process group, the shards, the checkpoint.

Every process ("rank") runs the same program. torch.distributed connects them into a process
group: here with the gloo backend, which runs on CPUs, over TCP on this machine's loopback
address. Who is who comes from the environment, as ``torchrun`` (or train.py's own launcher)
sets it: RANK (0 .. WORLD_SIZE-1), WORLD_SIZE, and MASTER_ADDR / MASTER_PORT, where rank 0
listens for the others.
"""

import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

LOOPBACK = "127.0.0.1"
# the loopback network interface, for gloo's own connections between the ranks
LOOPBACK_INTERFACE = "lo0" if sys.platform == "darwin" else "lo"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (the OS picks it), for MASTER_PORT."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def setup(timeout_s: float = 60.0) -> tuple[int, int]:
    """Join the process group that the environment describes; return (rank, world_size).

    Every collective call (all_reduce, DDP's gradient averaging, ...) waits at most
    ``timeout_s`` seconds for the other ranks, then raises instead of hanging forever.
    """
    dist.init_process_group("gloo", init_method="env://",
                            timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def make_loader(dataset: Dataset, batch_size: int, rank: int, world_size: int,
                shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A loader over this rank's shard of ``dataset``: 1 / world_size of it, no sample twice.

    The shards of all ranks are disjoint and together cover the data set (when its length is
    a multiple of world_size). With ``shuffle``, the order is drawn from ``seed`` and the
    epoch, the same way on every rank, so that the shards stay disjoint in every epoch.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                 seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Save the weights of ``model`` (a DistributedDataParallel wrapper) to ``path``.

    The file holds the state_dict of the model inside the wrapper, so that a plain model of
    the same architecture loads it, in a program that knows nothing of torch.distributed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.module.state_dict(), path)
    return path
