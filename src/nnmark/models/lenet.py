"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

The first conv is padded by 2 (the usual 28x28 variant). Small inputs are adapted per spatial
dimension at build time: the second 5x5 conv is padded by 2 along a dimension below 5, and a
2x2 max pool is skipped along a dimension that is already 1. So it builds for any H, W >= 1:
28x28 gives the classic 16x5x5 flatten, 8x8 gives 16x2x2, 12x12 gives 16x1x1. The flatten size
is computed from these rules, so building never runs the model.
"""

import torch
from torch import nn


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, round(channels * width))


def kaiming_init(module: nn.Module) -> None:
    """He initialisation (fan_out, ReLU) of every Conv2d weight in ``module``, as ResNet and VGG use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def halving_pool(h: int, w: int) -> tuple[nn.Module, int, int]:
    """A 2x2 max pool that skips each dimension already of size 1, and the size after it."""
    kh, kw = (2 if h > 1 else 1), (2 if w > 1 else 1)
    pool = nn.Identity() if kh == kw == 1 else nn.MaxPool2d((kh, kw))
    return pool, h // kh, w // kw


class LeNet5(nn.Module):
    """conv5-pool-conv5-pool-fc120-fc84-fc with ReLU; every layer's width scales by ``width``."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2, f1, f2 = (scaled(n, width) for n in (6, 16, 120, 84))
        pool1, h, w = halving_pool(h, w)
        pad = (2 if h < 5 else 0, 2 if w < 5 else 0)
        pool2, h, w = halving_pool(h + 2 * pad[0] - 4, w + 2 * pad[1] - 4)
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), pool1,
            nn.Conv2d(c1, c2, 5, padding=pad), nn.ReLU(), pool2,
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * h * w, f1), nn.ReLU(),
            nn.Linear(f1, f2), nn.ReLU(),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
