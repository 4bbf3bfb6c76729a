"""A held-out architecture for the benchmarks: written only for them, not in nnmark's zoo.

``groupnorm_gelu`` (the factory ``load_any`` imports as ``nnmark.bench.heldout:groupnorm_gelu``) builds a small RGB
CNN unlike every zoo model (GroupNorm instead of BatchNorm, GELU instead of ReLU, average pooling, a global-average
head). It takes 3x32x32 inputs normalised with ImageNet's mean and std, so a run states
``--normalize imagenet``; MNIST (``mnist5k``) becomes RGB 32x32 for it through ``data.load_for``.

Example::

    nnmark bench dbi --model nnmark.bench.heldout:groupnorm_gelu --normalize imagenet --data mnist5k
"""

from __future__ import annotations

import torch
from torch import nn

FACTORY = "nnmark.bench.heldout:groupnorm_gelu"
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
NORMALIZE = "imagenet"
WIDTH = 16
GROUPS = 4


class GroupNormGelu(nn.Module):
    """conv3x3 -> GroupNorm -> GELU -> avgpool2, three times (``width``, 2x, 4x channels), then global average and a
    linear head; ``input_shape`` tells ``load_any`` the input shape."""

    input_shape = INPUT_SHAPE

    def __init__(self, width: int = WIDTH, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers, c = [], INPUT_SHAPE[0]
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(GROUPS, w), nn.GELU(), nn.AvgPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def groupnorm_gelu() -> nn.Module:
    """The factory: a freshly initialised GroupNormGelu (seeded by the caller's torch RNG)."""
    return GroupNormGelu()
