"""What the training loop shows in TensorBoard besides scalars: weight histograms and a grid
of sample predictions, each digit framed green (right) or red (wrong).
"""

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

# The digits' pixel statistics: the model sees (pixels - MEAN) / STD, people want to see pixels.
MEAN, STD = 0.1307, 0.3081
GREEN = torch.tensor([0.0, 0.8, 0.0]).view(1, 3, 1, 1)
RED = torch.tensor([0.9, 0.0, 0.0]).view(1, 3, 1, 1)
FRAME = 2  # pixels


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the standardised inputs the model trains on (same shape)."""
    return (pixels - MEAN) / STD


def framed(pixels: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Grey images (N, 1, H, W) in [0, 1] -> RGB (N, 3, H, W) with a coloured frame.

    The frame (FRAME pixels wide) is green where ``correct`` (N,) is True, red where False.
    """
    n, _, h, w = pixels.shape
    rgb = pixels.expand(n, 3, h, w)  # (N, 3, H, W): grey in every channel
    border = torch.ones(h, w, dtype=torch.bool, device=pixels.device)
    border[FRAME:h - FRAME, FRAME:w - FRAME] = False  # (H, W): True on the frame only
    colour = torch.where(correct.view(n, 1, 1, 1), GREEN.to(pixels), RED.to(pixels))
    return torch.where(border, colour, rgb)  # (N, 3, H, W)


@torch.no_grad()
def log_predictions(writer: SummaryWriter, images: torch.Tensor, labels: torch.Tensor,
                    predictions: torch.Tensor, step: int) -> None:
    """Log a grid of the model's inputs ``images`` (N, 1, H, W), standardised as the model
    sees them, framed by whether ``predictions`` (N,) match ``labels`` (N,).

    TensorBoard expects float images in [0, 1] (it scales them by 255), channels first.
    """
    pixels = images  # what the model sees
    correct = predictions.to(labels.device) == labels
    writer.add_images("predictions", framed(pixels, correct.to(pixels.device)).cpu(), step)


@torch.no_grad()
def log_weights(writer: SummaryWriter, model: nn.Module, step: int) -> None:
    """One histogram per parameter tensor, tagged ``weights/<parameter name>``."""
    for name, parameter in model.named_parameters():
        writer.add_histogram(f"weights/{name}", parameter.detach().cpu(), step)
