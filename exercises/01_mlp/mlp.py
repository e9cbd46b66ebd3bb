"""A multi-layer perceptron that classifies 28x28 digit images into 10 classes."""

import torch
from torch import nn


class MLP(nn.Module):
    """Three fully connected layers, in_features -> 512 -> 256 -> num_classes, with ReLU
    between them.

    Input: images (B, 1, 28, 28) or flat vectors (B, in_features).
    Output: raw, unnormalised scores (logits) of shape (B, num_classes).
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 512)
        self.fc2 = nn.Linear(511, 256)
        self.fc3 = nn.Linear(256, num_classes)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(start_dim=1)  # (B, in_features)
        x = self.fc1(x)  # (B, 512)
        x = self.fc2(x)  # (B, 256)
        return torch.softmax(self.fc3(x), dim=1)  # (B, num_classes)
