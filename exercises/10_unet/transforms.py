"""Dictionary transforms that turn an (image, mask) pair into aligned network inputs.

A sample is a dictionary ``{"image": (H, W, C) array, "label": (H, W) class indices}``, as
images come from disk (PIL, numpy) channel-last. Every transform that moves pixels must
move the image's and the mask's pixels together, and the mask must keep its class values.
"""

from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    RandFlipd,
    RandRotate90d,
    Resized,
    ScaleIntensityd,
)

KEYS = ["image", "label"]


def preprocess(size: int = 64) -> list:
    """Deterministic steps: (H, W, C) image and (H, W) mask in; (C, size, size) float image
    in [0, 1] and (1, size, size) mask of the same class values out."""
    return [
        EnsureChannelFirstd(keys="image", channel_dim=-1),  # (H, W, C) -> (C, H, W)
        ScaleIntensityd(keys="image"),  # intensities to [0, 1]; class indices stay as they are
        Resized(keys=KEYS, spatial_size=(size, size), mode="bilinear"),
    ]


def augment() -> list:
    """Random flips and quarter turns of channel-first (C, H, W) image and (1, H, W) mask."""
    return [
        RandFlipd(keys="image", prob=0.5, spatial_axis=0),
        RandFlipd(keys="image", prob=0.5, spatial_axis=1),
        RandRotate90d(keys="image", prob=0.5),
    ]


def to_tensors() -> list:
    """Plain float32 tensors, without MONAI's metadata (faster to batch and to train on)."""
    return [EnsureTyped(keys=KEYS, dtype="float32", track_meta=False)]


def train_transforms(size: int = 64) -> Compose:
    """Preprocessing, then random augmentation: for the training split only."""
    return Compose(preprocess(size) + augment() + to_tensors())


def val_transforms(size: int = 64) -> Compose:
    """Preprocessing only: validation and test samples are never augmented."""
    return Compose(preprocess(size) + to_tensors())
