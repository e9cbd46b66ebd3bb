"""ResNet18 for 32x32 images (CIFAR-10), built from torchvision-compatible basic blocks.

The stem is a 3x3 convolution with stride 1 and no max-pooling: a 32x32 image is already
small, and ImageNet's 7x7 stride-2 stem plus pooling would shrink it to 8x8 at once. The four
stages (layer1..layer4) use torchvision's names, so their weights load into
``torchvision.models.resnet18`` and back.
"""

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Input (B, in_planes, H, W); output (B, planes, H', W') with H' = ceil(H / stride).
    The shortcut is the identity when the shape does not change, else a strided 1x1
    convolution with BatchNorm (``downsample``) that brings x to the output's shape.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H', W')
        out = self.bn2(self.conv2(out))  # (B, planes, H', W')
        return self.relu(out + self.downsample(x))


class ResNet18(nn.Module):
    """ResNet18 for (B, 3, 32, 32) images; returns logits (B, num_classes).

    ``width`` is the number of channels of layer1 (64 in the paper), doubled at each later
    stage; a small width gives a light model with the same structure, for quick tests.
    ``zero_init_residual`` sets the last BatchNorm weight of every block to zero, so that each
    block starts as the identity and the deep network trains like a shallow one at first.
    """

    def __init__(self, num_classes: int = 10, width: int = 64,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(width, width, stride=1)
        self.layer2 = self._stage(width, 2 * width, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, stride=2)
        self.layer4 = self._stage(4 * width, 8 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, w, 32, 32)
        x = self.layer1(x)  # (B, w, 32, 32)
        x = self.layer2(x)  # (B, 2w, 16, 16)
        x = self.layer3(x)  # (B, 4w, 8, 8)
        x = self.layer4(x)  # (B, 8w, 4, 4)
        x = self.avgpool(x).flatten(1)  # (B, 8w)
        return self.fc(x)  # (B, num_classes)
