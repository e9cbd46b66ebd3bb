"""A classifier with BatchNorm and Dropout, and a short training run on digits."""

import torch
from stable import cross_entropy
from torch import nn


class Net(nn.Module):
    """An MLP with BatchNorm and Dropout: (B, 1, 28, 28) or (B, 784) in, (B, 10) logits out."""

    def __init__(self, in_features: int = 784, num_classes: int = 10, p: float = 0.5) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),  # (B, in_features)
            nn.Linear(in_features, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(p),
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(p),
            nn.Linear(128, num_classes),  # (B, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 2,
          batch_size: int = 64, device: str | torch.device = "cpu") -> list[float]:
    """Adam on the hand-written cross-entropy; returns the loss of every step."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch_size):
            loss = cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses
