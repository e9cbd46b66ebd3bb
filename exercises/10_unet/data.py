"""Where the (image, mask) pairs come from: MONAI's synthetic circles offline, SBD online.

Both give samples as the dictionaries the transforms take: ``{"image": (H, W, C),
"label": (H, W)}``, channel-last as images come from disk.
"""

from pathlib import Path

import numpy as np
import torch
from monai.data.synthetic import create_test_image_2d

SBD_CLASSES = 21  # the background and the 20 object classes of PASCAL VOC


def synthetic_pairs(n: int, size: int = 64, num_classes: int = 3, noise: float = 0.5,
                    seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` noisy images of circles, (size, size, 1) float32, each with its (size, size)
    int64 mask of classes 0 .. num_classes - 1 (the circles' brightness gives their class)."""
    rng = np.random.RandomState(seed)
    pairs = []
    for _ in range(n):
        image, mask = create_test_image_2d(
            size, size, num_objs=6, rad_max=max(size // 6, 4), rad_min=max(size // 16, 2),
            noise_max=noise, num_seg_classes=num_classes - 1, random_state=rng)
        pairs.append((image[..., None].astype(np.float32), mask.astype(np.int64)))
    return pairs


class PairsAsDicts(torch.utils.data.Dataset):
    """Any sequence of (image, mask) pairs, as transformed sample dictionaries."""

    def __init__(self, pairs, transform) -> None:
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.pairs[index]
        sample = {"image": np.array(image, dtype=np.float32), "label": np.array(mask)}
        return self.transform(sample)


def sbd(root: str | Path, image_set: str = "train", download: bool = False):
    """torchvision's Semantic Boundaries Dataset as (RGB PIL image, PIL mask) pairs.

    ``image_set`` is "train" (8,498 images) or "val" (2,857). With ``download`` the archive
    (1.4 GB) is fetched once into ``root``; asking torchvision to download again would
    re-extract it.
    """
    from torchvision.datasets import SBDataset

    download = download and not (Path(root) / "img").is_dir()
    return SBDataset(str(root), image_set=image_set, mode="segmentation", download=download)
