"""A small convolutional network for 28x28 grayscale digits, and the arithmetic of its sizes."""

import torch
from torch import nn


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Height (or width) of what nn.Conv2d or nn.MaxPool2d makes of an input of ``size``.

    The formula is (W - K + 2P) / S + 1, counting only the positions where the whole
    window fits. nn.MaxPool2d's stride defaults to its kernel size, nn.Conv2d's to 1.
    """
    return (size - kernel + 2 * padding) / stride + 1


class Net(nn.Module):
    """Two convolution blocks, then a small fully connected classifier.

    features:   (B, 1, 28, 28) grayscale images, pixels in [0, 1] -> (B, 32, 7, 7)
    classifier: (B, 32, 7, 7) feature maps -> (B, num_classes) raw scores (logits)
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),  # (B, 16, 28, 28)
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 16, 14, 14)
            nn.Conv2d(16, 32, kernel_size=3, padding=1),  # (B, 32, 14, 14)
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 7, 7)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, C * H * W): every channel at every position
            nn.Dropout(dropout),
            nn.Linear(32 * 5 * 5, 128),  # (B, 128)
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),  # (B, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, 1, 28, 28) -> (B, num_classes)
