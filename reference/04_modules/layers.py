"""Building blocks for nn.Module models: a Reshape layer, a stack of registered blocks,
a small CNN written as nn.Sequential, and a parameter counter."""

from collections import OrderedDict

import torch
from torch import nn


class Reshape(nn.Module):
    """Reshape every sample of a batch, keeping the batch dimension: (B, ...) -> (B, *shape).

    ``Reshape(1, 28, 28)`` turns (B, 784) into (B, 1, 28, 28); ``Reshape(-1)`` flattens each
    sample. At most one entry of ``shape`` may be -1: it is inferred from the sample's size.
    Works on any input, contiguous in memory or not.
    """

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], *self.shape)  # (B, *shape): the batch dimension stays
        return x.reshape(shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Blocks(nn.Module):
    """An MLP with ``depth`` hidden blocks of equal width, each Linear followed by ReLU.

    (B, in_features) -> (B, num_classes). The number of blocks is chosen at run time, so
    they are built in a loop and kept in a container.
    """

    def __init__(self, in_features: int = 784, width: int = 64, depth: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))  # (B, width)
        for block in self.blocks:
            x = torch.relu(block(x))  # (B, width)
        return self.head(x)  # (B, num_classes)


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    """A CNN for flat 28x28 images, built from layers alone: (B, 784) -> (B, num_classes).

    Layer names, as ``named_modules()`` gives them: "features.1" is the first convolution
    (8 channels), "features.4" the second (16 channels).
    """
    features = nn.Sequential(
        Reshape(1, 28, 28),  # (B, 1, 28, 28)
        nn.Conv2d(1, 8, 3, padding=1),  # (B, 8, 28, 28)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 8, 14, 14)
        nn.Conv2d(8, 16, 3, padding=1),  # (B, 16, 14, 14)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 16, 7, 7)
    )
    classifier = nn.Sequential(
        Reshape(-1),  # (B, 784)
        nn.Linear(16 * 7 * 7, num_classes),  # (B, num_classes)
    )
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of scalar parameters (weights and biases) in ``model``.

    With ``trainable_only``, parameters frozen with ``requires_grad_(False)`` do not count.
    Buffers (such as BatchNorm's running averages) are not parameters and never count.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
