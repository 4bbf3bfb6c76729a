"""Narrow VGG with BatchNorm (Simonyan & Zisserman 2015, "Very deep convolutional networks").

Configs A (VGG-11) and D (VGG-16) with channels divided by 4 at width 1.0 (16, 32, 64, 128,
128 for the five blocks). A max pool is skipped along a dimension already of size 1 (decided at
build time), then global average pooling and one linear classifier; builds for any H, W >= 1.
"""

from torch import nn

from nnmark.models.gap import GapClassifier
from nnmark.models.lenet import halving_pool, scaled

# Conv widths of the five blocks at full (paper) width; each block ends in a max pool.
CONFIGS: dict[str, list[list[int]]] = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


class VGG(GapClassifier):
    """Blocks of 3x3 conv-BN-ReLU, each followed by a 2x2 max pool where it fits; GAP, linear."""

    def __init__(self, config: str, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> None:
        c_in, h, w = input_shape
        layers: list[nn.Module] = []
        for block in CONFIGS[config]:
            for c in block:
                c_out = scaled(c // 4, width)
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
            pool, h, w = halving_pool(h, w)
            layers.append(pool)
        super().__init__(layers, c_in, num_classes)
