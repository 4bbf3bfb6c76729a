"""The head ResNets and VGGs share: features, global average pooling, flatten, one linear classifier."""

import torch
from torch import nn

from nnmark.models.lenet import kaiming_init


class GapClassifier(nn.Module):
    """``features`` = the given layers + AdaptiveAvgPool2d(1) + Flatten, then ``classifier`` = Linear(channels, K);
    He-initialised convolutions. Global average pooling makes the network build for any H, W >= 1."""

    def __init__(self, layers: list[nn.Module], channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
