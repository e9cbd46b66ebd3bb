"""Checkpoints that resume training exactly, written so that a crash never destroys the last one.

A checkpoint is a plain dict of tensors, numbers and strings, so that it loads with
``torch.load(..., weights_only=True)``, which refuses to run code hidden in a file.
"""

import os
from pathlib import Path

import torch
from torch import nn


def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Save the training state after ``epoch`` completed epochs to ``path``.

    The file at ``path`` is replaced in one step: at any moment it holds either the previous
    checkpoint or the new one, never a half-written file, even if the program dies mid-save.
    """
    state = {
        "model": model.state_dict(),
        "epoch": epoch,  # epochs completed, which is also the index of the next one
        "rng": torch.get_rng_state(),  # decides the next shuffle of the data
    }
    torch.save(state, path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    device: str | torch.device = "cpu") -> int:
    """Restore the training state saved at ``path`` in place; return the epochs completed.

    Works on any machine: tensors saved on a GPU are loaded onto ``device``.
    """
    state = torch.load(path)
    model.load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:  # files exported for inference have none
        optimizer.load_state_dict(state["optimizer"])
    return state["epoch"]
