"""ResNet-50 of bottleneck blocks at ImageNet size (He et al. 2016, "Deep residual learning for image recognition").

Table 1's 50-layer network: a 7x7/2 conv to 64 channels and a 3x3/2 max pool (the ImageNet stem), then four stages
of [3, 4, 6, 3] bottleneck blocks (1x1 down to 64/128/256/512 channels, 3x3, 1x1 up to 4x that), stride 2 on the
3x3 conv entering stages 2-4 (the "v1.5" placement most released weights use), option-B shortcuts, global average
pooling and a 1000-way linear layer: 25,557,032 parameters at 3x224x224 with 1000 classes. Global average pooling
makes it build for any H, W >= 1. Random weights: a cost model, not a classifier, until trained.

Through the ``module:factory`` source::

    nnmark mark dbi --model nnmark.models.resnet_imagenet:resnet50 --data npz:images.npz ...
"""

import torch
from torch import nn

from nnmark.models.gap import GapClassifier
from nnmark.models.lenet import scaled

IMAGENET_SHAPE = (3, 224, 224)
IMAGENET_CLASSES = 1000
EXPANSION = 4
"""A bottleneck block's output has 4x the channels of its 3x3 conv."""


class Bottleneck(nn.Module):
    """1x1 (reduce), 3x3 (stride), 1x1 (expand x4) conv-BN layers plus a shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_mid: int, stride: int) -> None:
        super().__init__()
        c_out = c_mid * EXPANSION
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 3, stride, 1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(),
            nn.Conv2d(c_mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class BottleneckResNet(GapClassifier):
    """ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), stages of bottleneck blocks, GAP, linear."""

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], blocks: list[int]) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels[0], 7, 2, 3, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        ]
        c_in = channels[0]
        for stage, (c_mid, n) in enumerate(zip(channels, blocks)):
            for i in range(n):
                layers.append(Bottleneck(c_in, c_mid, 2 if stage > 0 and i == 0 else 1))
                c_in = c_mid * EXPANSION
        super().__init__(layers, c_in, num_classes)


def imagenet_resnet50(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> BottleneckResNet:
    """ResNet-50: [3, 4, 6, 3] bottleneck blocks, 64/128/256/512 inner channels times ``width``."""
    return BottleneckResNet(input_shape[0], num_classes, [scaled(c, width) for c in (64, 128, 256, 512)],
                            [3, 4, 6, 3])


def resnet50() -> BottleneckResNet:
    """The ``module:factory`` entry: ResNet-50 for 3x224x224 inputs and 1000 classes, randomly initialised."""
    model = imagenet_resnet50(IMAGENET_SHAPE, IMAGENET_CLASSES)
    model.input_shape = IMAGENET_SHAPE
    return model
