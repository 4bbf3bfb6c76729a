"""ResNets of basic blocks (He et al. 2016, "Deep residual learning for image recognition").

``resnet20``/``resnet32`` follow the CIFAR design of sec. 4.2: a 3x3 conv to 16 channels, then
three stages of n blocks with 16/32/64 channels (stride 2 entering stages 2 and 3). ``resnet18``
is the four-stage [2, 2, 2, 2] network with 64/128/256/512 channels on a CIFAR stem (3x3 conv,
stride 1, no max pool). Shortcuts are identity, or option B (1x1 conv + BN) where the shape
changes. Global average pooling makes them build for any H, W >= 1.
"""

import torch
from torch import nn

from nnmark.models.gap import GapClassifier
from nnmark.models.lenet import scaled


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(GapClassifier):
    """3x3 stem, stages of basic blocks (stride 2 entering every stage after the first), GAP, linear."""

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], blocks: list[int]) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(),
        ]
        c_in = channels[0]
        for stage, (c_out, n) in enumerate(zip(channels, blocks)):
            for i in range(n):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        super().__init__(layers, c_in, num_classes)


def cifar_resnet(depth: int, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ResNet:
    """ResNet-``depth`` of sec. 4.2 (depth = 6n + 2): 16/32/64 channels times ``width``."""
    n = (depth - 2) // 6
    return ResNet(input_shape[0], num_classes, [scaled(c, width) for c in (16, 32, 64)], [n] * 3)


def resnet18(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ResNet:
    """ResNet-18 on a CIFAR stem: [2, 2, 2, 2] blocks, 64/128/256/512 channels times ``width``."""
    return ResNet(input_shape[0], num_classes, [scaled(c, width) for c in (64, 128, 256, 512)], [2] * 4)
