"""CIFAR-10 for a ResNet: augmentation on the training split only, normalisation that matches
the weights in use.

Training images are randomly shifted (a 32x32 crop of the image padded by 4 pixels) and
mirrored; test images are only converted and normalised, so that evaluation is repeatable.
ImageNet weights were trained on inputs normalised with ImageNet's mean and std; a network
trained from scratch here uses CIFAR-10's own statistics.
"""

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.models import WeightsEnum
from torchvision.transforms import v2

# per-channel (R, G, B) mean and std of each training set, pixels scaled to [0, 1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def normalization(weights: WeightsEnum | None = None) -> tuple[tuple[float, ...],
                                                                tuple[float, ...]]:
    """(mean, std) to normalise inputs with: those the weights were trained with, if any."""
    if weights is not None:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return CIFAR10_MEAN, CIFAR10_STD


def make_transform(train: bool, weights: WeightsEnum | None = None) -> v2.Compose:
    """PIL image (32x32 RGB) -> normalised float tensor (3, 32, 32); augmented if ``train``."""
    mean, std = normalization(weights)
    augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
    return v2.Compose([
        *augment,
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),  # uint8 [0, 255] -> float [0, 1]
        v2.Normalize(mean, std),
    ])


def cifar10(root: str | Path = "data", weights: WeightsEnum | None = None,
            download: bool = False, dataset_cls: type = datasets.CIFAR10,
            ) -> tuple[Dataset, Dataset]:
    """(train_set, test_set) of CIFAR-10 under ``root``, downloading it once if asked to.

    Items are (image (3, 32, 32), label). ``dataset_cls`` is the dataset class to open the
    files with (torchvision's CIFAR10, or a stand-in with the same interface).
    """
    train_set = dataset_cls(root, train=True, transform=make_transform(True, weights),
                            download=download)
    test_set = dataset_cls(root, train=False, transform=make_transform(True, weights),
                           download=download)
    return train_set, test_set


def fake_data(size: int = 64, weights: WeightsEnum | None = None,
              num_classes: int = 10) -> tuple[Dataset, Dataset]:
    """Random 32x32 RGB images with random labels, for smoke tests: nothing to download."""
    train_set = datasets.FakeData(size, (3, 32, 32), num_classes,
                                  transform=make_transform(True, weights))
    test_set = datasets.FakeData(size, (3, 32, 32), num_classes,
                                 transform=make_transform(False, weights), random_offset=size)
    return train_set, test_set
