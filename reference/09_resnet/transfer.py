"""Transfer learning from torchvision's ResNet18: a new head, a frozen or a fine-tuned backbone.

    model = build_transfer_model(10, weights=ResNet18_Weights.DEFAULT)  # downloads once
    model = build_transfer_model(10, checkpoint="resnet18.pt")          # offline, same shapes

With ``freeze_backbone=True`` only the new head learns: the backbone's parameters keep their
values and its BatchNorm layers keep their running statistics. With ``False`` every layer
is fine-tuned.
"""

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18


def build_transfer_model(num_classes: int = 10, weights: ResNet18_Weights | None = None,
                         freeze_backbone: bool = True,
                         checkpoint: str | Path | None = None) -> nn.Module:
    """torchvision's ResNet18 with its 1000-class ImageNet head replaced by ``num_classes``.

    ``weights`` is a torchvision weights enum (``ResNet18_Weights.DEFAULT``) or None;
    ``checkpoint`` a saved state_dict of a torchvision resnet18 to start from instead.
    Input (B, 3, H, W) normalised as the weights expect; output logits (B, num_classes).
    """
    model = resnet18(weights=weights)
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    if freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
    model.fc = nn.Linear(model.fc.in_features, num_classes)  # (B, 512) -> (B, num_classes)
    return model


def make_optimizer(model: nn.Module, lr: float = 0.01, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD with momentum over the parameters that are meant to learn, and only those."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=True)


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()`` for an epoch of training, except for frozen BatchNorm layers.

    A BatchNorm layer whose weight does not learn is part of a frozen backbone: it stays in
    eval mode, normalising with the running statistics it came with and leaving them as they
    are. Call this (not ``model.train()``) at the start of every training epoch.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad:
            m.eval()
    return model
