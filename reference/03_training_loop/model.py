"""A small classifier whose output depends on train/eval mode (it has BatchNorm and Dropout)."""

import torch
from torch import nn


class SmallNet(nn.Module):
    """Two hidden layers of Linear -> BatchNorm -> ReLU -> Dropout, then a Linear head.

    Input (B, in_features), output raw scores (B, num_classes).

    In train mode, Dropout zeroes random units and BatchNorm normalises with the statistics
    of the current batch (and updates its running averages). In eval mode Dropout does
    nothing and BatchNorm uses its running averages. The same input gives different outputs.
    """

    def __init__(self, in_features: int = 2, hidden: int = 64, num_classes: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),  # (B, hidden)
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),  # (B, hidden)
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),  # (B, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
