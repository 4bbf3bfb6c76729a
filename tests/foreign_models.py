"""A classifier that is not in nnmark's zoo, for the model-source tests: GroupNorm + GELU, RGB 32x32 input,
trained on mean/std-normalised pixels. ``small_gn_net`` is the factory ``load_any`` imports as
``foreign_models:small_gn_net``."""

import torch
from torch import nn

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
MEAN_STD = ((0.5, 0.45, 0.4), (0.25, 0.25, 0.3))
WIDTH = 8


class SmallGNNet(nn.Module):
    """conv3x3 -> GroupNorm -> GELU -> avgpool2, twice, then a linear head; expects (x - mean) / std."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = WIDTH):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(2, width), nn.GELU(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width), nn.GELU(), nn.AvgPool2d(2),
        )
        self.head = nn.Linear(2 * width * (INPUT_SHAPE[1] // 4) * (INPUT_SHAPE[2] // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def small_gn_net() -> nn.Module:
    """The factory: a freshly initialised SmallGNNet (seeded by the caller's torch RNG)."""
    return SmallGNNet()


def two_input_net() -> nn.Module:
    """A model with two inputs (image, scale), which an image classifier source must refuse."""
    return TwoInputs()


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = SmallGNNet()

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.net(x) * scale
