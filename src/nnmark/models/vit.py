"""Vision Transformers (Dosovitskiy et al. 2021, "An image is worth 16x16 words"), as DeiT sizes them.

Non-overlapping P x P patches embedded by a stride-P conv, a learned class token and learned position embeddings,
L pre-norm blocks (LayerNorm, multi-head self-attention, residual; LayerNorm, MLP of 4x width with GELU,
residual), a final LayerNorm and a linear head on the class token. ViT-S/16: width 384, 12 blocks, 6 heads
(22,050,664 parameters at 3x224x224 with 1000 classes); ViT-Ti/16: width 192, 12 blocks, 3 heads (5,717,416).
The patch side is min(P, H, W), so the network builds for any H, W >= 1 (a remainder that fills no whole patch
is cropped, as a stride-P conv does). Random weights: a cost model, not a classifier, until trained.

Through the ``module:factory`` source::

    nnmark mark dbi --model nnmark.models.vit:vit_s16 --data npz:images.npz ...
"""

import torch
from torch import nn

from nnmark.models.lenet import scaled
from nnmark.models.resnet_imagenet import IMAGENET_CLASSES, IMAGENET_SHAPE

PATCH = 16
MLP_RATIO = 4
SIZES: dict[str, tuple[int, int, int]] = {"vit_ti16": (192, 12, 3), "vit_s16": (384, 12, 6)}
"""Name -> (width, depth, heads) at width 1.0."""


class Block(nn.Module):
    """x + MSA(LN(x)), then x + MLP(LN(x)) (pre-norm)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Linear(MLP_RATIO * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, class token, position embeddings, ``depth`` pre-norm blocks, LayerNorm, linear head."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dim: int, depth: int,
                 heads: int) -> None:
        super().__init__()
        c, h, w = input_shape
        patch = min(PATCH, h, w)
        self.patch_embed = nn.Conv2d(c, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (h // patch) * (w // patch), dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit(name: str, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ViT:
    """The ``SIZES`` entry ``name``; ``width`` scales each head's 64 dimensions (so heads always divide the width)."""
    dim, depth, heads = SIZES[name]
    return ViT(input_shape, num_classes, heads * scaled(dim // heads, width), depth, heads)


def _at_imagenet_size(name: str) -> ViT:
    model = vit(name, IMAGENET_SHAPE, IMAGENET_CLASSES)
    model.input_shape = IMAGENET_SHAPE
    return model


def vit_s16() -> ViT:
    """The ``module:factory`` entry: ViT-S/16 for 3x224x224 inputs and 1000 classes, randomly initialised."""
    return _at_imagenet_size("vit_s16")


def vit_ti16() -> ViT:
    """The ``module:factory`` entry: ViT-Ti/16 for 3x224x224 inputs and 1000 classes, randomly initialised."""
    return _at_imagenet_size("vit_ti16")
