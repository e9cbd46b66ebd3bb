"""The network, the loss and the score of a 2-D segmentation, all from MONAI.

Shapes: images (B, C_in, H, W); logits (B, num_classes, H, W), one raw score per class and
pixel; labels (B, 1, H, W) of class indices 0 .. num_classes - 1 (0 is the background).
"""

import torch
from monai.data import decollate_batch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.transforms import AsDiscrete
from torch import nn


def build_unet(in_channels: int = 1, num_classes: int = 3,
               channels: tuple[int, ...] = (16, 32, 64, 128), num_res_units: int = 2) -> UNet:
    """A 2-D U-Net from (B, in_channels, H, W) images to (B, num_classes, H, W) logits.

    Each level after the first halves the resolution, so H and W must be divisible by
    2 ** (len(channels) - 1); ``predict`` handles any other size.
    """
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                channels=channels, strides=(2,) * (len(channels) - 1),
                num_res_units=num_res_units)


def build_loss() -> nn.Module:
    """Dice + cross-entropy between logits (B, C, H, W) and labels (B, 1, H, W)."""
    return DiceCELoss()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, roi_size: int = 64,
            sw_batch_size: int = 8) -> torch.Tensor:
    """Logits (B, C, H, W) for images (B, C_in, H, W) of any size, in eval mode.

    The network sees roi_size x roi_size windows (overlapping by a quarter, padded at the
    borders); their logits are blended back into one map of the input's size.
    """
    model.eval()
    return sliding_window_inference(images, (roi_size, roi_size), sw_batch_size, model,
                                    overlap=0.25, mode="gaussian")


def dice_per_image(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of each image's predicted mask, averaged over the foreground classes: (B,).

    logits (B, C, H, W), labels (B, 1, H, W). A class absent from an image's label does not
    count for that image; 1.0 means every pixel got its class.
    """
    to_onehot = AsDiscrete(to_onehot=num_classes)  # (1, H, W) indices -> (C, H, W) 0/1
    to_mask = AsDiscrete(threshold=0.5)  # (C, H, W) scores -> 0/1
    predicted = [to_mask(scores) for scores in decollate_batch(logits.detach())]
    truth = [to_onehot(label) for label in decollate_batch(labels)]
    metric = DiceMetric(include_background=False, reduction="mean_channel")
    metric(y_pred=predicted, y=truth)
    return metric.aggregate().cpu()  # (B,)
