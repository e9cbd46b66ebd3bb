"""Checkpoints that resume training exactly, written so that a crash never destroys the last one.

A checkpoint is a plain dict of tensors, numbers and strings, so that it loads with
``torch.load(..., weights_only=True)``, which refuses to run code hidden in a file.
"""

import os
import pickle
import re
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

    Works on any machine: tensors saved on a GPU are loaded onto ``device``. Raises
    ValueError, saying why, for a file that is not a checkpoint of this model.
    """
    try:
        state = torch.load(path)
    except pickle.UnpicklingError as exc:  # weights_only refused what the file holds
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"a pickled Python object ({found.group(1)})" if found else "no torch.save data"
        raise ValueError(f"{path} holds {what}, not only tensors and numbers") from None
    except Exception:  # noqa: BLE001 - truncated, or not torch.save's format at all
        raise ValueError(f"{path} is damaged, or not a file that torch.save wrote") from None
    if not isinstance(state, dict) or not {"model", "epoch", "rng"} <= state.keys():
        raise ValueError(f"{path} is not a training checkpoint (no model, epoch and rng)")
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None and "optimizer" in state:  # exported for inference: none
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} was saved from another model or optimizer "
                         f"({' '.join(str(exc).split())[:150]})") from None
    return state["epoch"]
