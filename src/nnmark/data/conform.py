"""Data for any model: images converted to the model's channels and resized to its input size.

Channels: gray -> RGB repeats the channel; RGB -> gray takes the ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B,
as Pillow's "L" conversion). Size: ``interpolation`` is one of INTERPOLATIONS; "bilinear" and "bicubic" are
antialiased when shrinking (as Pillow resizes), and every result is clipped to [0, 1].

Example::

    ds = conform(data.load("mnist5k"), card)         # 1x28x28 digits for a 3x32x32 model with 10 classes
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from nnmark.data._types import Dataset, Split
from nnmark.errors import DataError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
DEFAULT_INTERPOLATION = "bilinear"
LUMA = (0.299, 0.587, 0.114)
PIL_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC, "area": Image.Resampling.BOX}
_ANTIALIASED = ("bilinear", "bicubic")


class ModelInput(Protocol):
    """What conforming needs to know of a model (a ``nnmark.models.ModelCard`` has it)."""

    input_shape: tuple[int, int, int]
    num_classes: int


def check_interpolation(interpolation: str) -> None:
    """Raise DataError unless ``interpolation`` is one of INTERPOLATIONS."""
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")


def image_mode(channels: int) -> str:
    """The Pillow mode images are decoded in for a ``channels``-channel model ("L" or "RGB")."""
    if channels not in (1, 3):
        raise DataError(f"images can be converted to 1 or 3 channels, the model takes {channels}")
    return "L" if channels == 1 else "RGB"


def convert_images(x: torch.Tensor, shape: tuple[int, int, int], interpolation: str = DEFAULT_INTERPOLATION
                   ) -> torch.Tensor:
    """``x`` (N, C, H, W) in [0, 1] with its channels converted and its images resized to ``shape`` (C', H', W')."""
    check_interpolation(interpolation)
    c, h, w = shape
    if x.shape[1] != c:
        image_mode(c)
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif x.shape[1] == 3:
            x = torch.einsum("nchw,c->nhw", x, torch.tensor(LUMA, dtype=x.dtype)).unsqueeze(1)
        else:
            raise DataError(f"images have {x.shape[1]} channels; only 1 and 3 can be converted")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode=interpolation, antialias=interpolation in _ANTIALIASED)
    return x.clamp(0, 1).contiguous()


def conform(dataset: Dataset, model: ModelInput, interpolation: str = DEFAULT_INTERPOLATION) -> Dataset:
    """``dataset`` as ``model`` takes it: same classes (else DataError naming both counts), its channels and size."""
    if dataset.num_classes != model.num_classes:
        raise DataError(f"{dataset.name} has {dataset.num_classes} classes but the model has {model.num_classes}")
    shape = tuple(model.input_shape)
    if dataset.shape == shape:
        return dataset
    train, test = (Split(convert_images(s.x, shape, interpolation), s.y) for s in (dataset.train, dataset.test))
    return Dataset(dataset.name, train, test, dataset.num_classes, dataset.classes)
