"""From a data set's name to augmented training data and clean test data, both normalised.

    train, test = make_datasets("cifar10", "data", download=True)
    train_loader, test_loader = make_loaders(train, test, batch_size=128)
"""

import torch
from dataset import offline_digits
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2

# name -> a dataset class, or any function called the same way:
# source(root, train=True or False, transform=..., download=...)
REGISTRY = {
    "digits": offline_digits,
    "mnist": datasets.MNIST,
    "fashionmnist": datasets.FashionMNIST,
    "cifar10": datasets.CIFAR10,
}
# data sets whose classes survive a left-right mirror (a mirrored 7 is not a digit)
MIRROR_SAFE = {"fashionmnist", "cifar10"}


def to_float_image() -> v2.Transform:
    """PIL image or uint8 tensor -> float32 tensor (C, H, W) with values in [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def channel_stats(dataset: Dataset, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation, each (C,), over every pixel of every image.

    ``dataset`` yields (image, label) pairs with float images (C, H, W). One pass over the
    data, summed in float64, so that a large data set never has to fit in memory at once.
    """
    total = torch.zeros((), dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    count = 0
    for x, _ in DataLoader(dataset, batch_size=batch_size):
        x = x.double()  # (B, C, H, W)
        dims = (0, 2, 3)  # batch, height, width: every axis but the channels
        total = total + x.sum(dim=dims)  # (C,)
        total_sq = total_sq + x.square().sum(dim=dims)  # (C,)
        count += x.numel() // x.shape[1]  # pixels per channel
    mean = total / count
    std = (total_sq / count - mean.square()).clamp(min=0).sqrt()
    return mean.float(), std.float()


def make_transform(mean: torch.Tensor, std: torch.Tensor, size: int, augment: bool = False,
                   mirror: bool = False) -> v2.Transform:
    """Image -> normalised float32 tensor (C, size, size); random shifts (and mirrors) if asked."""
    steps = [v2.ToImage()]
    if augment:
        steps.append(v2.RandomCrop(size, padding=size // 8))  # shift by up to 1/8 of the side
        if mirror:
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean.tolist(), std.tolist())]
    return v2.Compose(steps)


def make_datasets(name: str, root: str = "data", download: bool = False,
                  registry: dict = REGISTRY) -> tuple[Dataset, Dataset]:
    """The training and test splits of data set ``name``, ready for a model.

    Both splits are normalised with the per-channel statistics of the training split; only
    the training split is augmented. ``registry`` maps names to dataset classes: pass your
    own (``{**REGISTRY, "kmnist": datasets.KMNIST}``) to add or replace one.
    """
    if name not in registry:
        raise ValueError(f"unknown data set {name!r}: choose one of {sorted(registry)}")
    source = registry[name]
    plain = source(root, train=True, transform=to_float_image(), download=download)
    mean, std = channel_stats(plain)
    channels, size = plain[0][0].shape[0], plain[0][0].shape[-1]  # images are (C, H, W)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(f"channel_stats gave statistics of shape {tuple(mean.shape)} and "
                         f"{tuple(std.shape)} for images with {channels} channel(s); Normalize "
                         f"needs one mean and one std per channel, shape ({channels},)")
    train_tf = make_transform(mean, std, size, augment=True, mirror=name in MIRROR_SAFE)
    test_tf = make_transform(mean, std, size)
    train = source(root, train=True, transform=train_tf, download=download)
    test = source(root, train=False, transform=test_tf, download=download)
    return train, test


def make_loaders(train: Dataset, test: Dataset, batch_size: int = 64,
                 num_workers: int = 0) -> tuple[DataLoader, DataLoader]:
    """Batches that visit every sample once per epoch: training ones in a fresh random order."""
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True,
                              num_workers=num_workers)
    test_loader = DataLoader(test, batch_size=batch_size, num_workers=num_workers)
    return train_loader, test_loader
