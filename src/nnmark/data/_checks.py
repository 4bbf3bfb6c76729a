"""Checks every loaded dataset passes; each failure is a one-line :class:`DataError`."""

import math
from pathlib import Path

import torch

from nnmark.errors import DataError


def validate(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, source: str = "data") -> None:
    """Raise DataError unless ``x``/``y`` form a usable labelled image set.

    ``x`` must be a finite float32 (N, C, H, W) tensor with values in [0, 1], ``y`` an int64 (N,)
    tensor with labels in [0, num_classes), and N >= 1. ``source`` starts every message.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError(f"{source}: x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dtype != torch.float32 or x.dim() != 4:
        raise DataError(f"{source}: x must be a float32 (N, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if y.dtype != torch.int64 or y.dim() != 1:
        raise DataError(f"{source}: y must be an int64 (N,) tensor, got {y.dtype} of shape {tuple(y.shape)}")
    if len(x) != len(y):
        raise DataError(f"{source}: x has {len(x)} images but y has {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{source}: no images")
    lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates to both
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError(f"{source}: x contains NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{source}: x values must lie in [0, 1], found min {lo:g} and max {hi:g}")
    if num_classes < 1:
        raise DataError(f"{source}: num_classes must be at least 1, got {num_classes}")
    if int(y.min()) < 0:
        raise DataError(f"{source}: y has negative label {int(y.min())}")
    if int(y.max()) >= num_classes:
        raise DataError(f"{source}: y has label {int(y.max())} but there are only {num_classes} classes")


def existing(path: str, source: str, *, folder: bool) -> Path:
    """Return ``path`` (with ``~`` expanded) if it is an existing file (or folder), else raise DataError."""
    p = Path(path).expanduser()
    if folder and not p.is_dir():
        raise DataError(f"{source}: {p} is not an existing folder")
    if not folder and not p.is_file():
        raise DataError(f"{source}: {p} is not an existing file")
    return p
