"""CIFAR-style ResNets (He et al. 2016, section 4.2): depth 6n+2, three stages of
BasicBlocks. The `x4` variants (as in the CRD/RepDistiller model zoo) are four times
wider, with a 32-channel stem. Projection shortcuts (1x1 conv + BN) where shapes change.
"""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    feature_layers = ("layer1", "layer2", "layer3")

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_ch: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        planes = widths[0]
        stages = []
        for i, width in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(planes, width, 2 if (i > 0 and j == 0) else 1))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


CIFAR_RESNETS = {f"cifar_resnet{d}": (d, (16, 16, 32, 64)) for d in (8, 20, 32, 56, 110)} | {
    "cifar_resnet8x4": (8, (32, 64, 128, 256)),
    "cifar_resnet32x4": (32, (32, 64, 128, 256)),
}
