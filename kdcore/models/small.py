"""Small models for tiny inputs: a 3-stage CNN and an MLP (also for vector data)."""

from __future__ import annotations

import math

from torch import Tensor, nn


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    feature_layers = ("stage1", "stage2", "stage3")

    def __init__(self, num_classes: int, in_ch: int, width: int = 16):
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(in_ch, width), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(_conv_bn(width, 2 * width), nn.MaxPool2d(2))
        self.stage3 = _conv_bn(2 * width, 4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.pool(x).flatten(1))


class MLP(nn.Module):
    feature_layers = ("hidden",)

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: int = 256):
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(hidden // 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden(x))
