"""Everyday tensor recipes: the numpy bridge, views, and new tensors that fit old ones.

Each function is a few lines; each line decides whether memory is shared or copied, which
dtype and device a result gets, or which axis is which.
"""

import numpy as np
import torch


def shared_from_numpy(array: np.ndarray) -> torch.Tensor:
    """Wrap ``array`` as a CPU tensor that shares its memory: no element is copied.

    The tensor keeps the array's dtype (float64 stays float64) and its shape, and a write
    through either one is seen by the other.
    """
    return torch.tensor(array)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy array with the values of ``t``, which may require grad or live on a GPU.

    For a CPU tensor the array shares the tensor's memory; a GPU tensor is copied to the
    host first (numpy only knows host memory).
    """
    return t.detach().cpu().numpy()


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) as (B, H, W, C), e.g. to hand them to matplotlib.

    Returns a view of ``images``: the same memory, read in another order, nothing copied.
    """
    b, c, h, w = images.shape
    return images.reshape(b, h, w, c)  # (B, H, W, C)


def add_bias_column(x: torch.Tensor) -> torch.Tensor:
    """Append a column of ones to a batch of feature rows: (N, d) -> (N, d + 1).

    With it a linear model ``x @ w`` gets a bias for free. The result has ``x``'s dtype and
    lives on ``x``'s device.
    """
    ones = torch.ones(len(x), 1)  # (N, 1)
    return torch.cat([x, ones], dim=1)  # (N, d + 1)
