"""What an attack changed: bit-wise changed parameters and buffers, weight sparsity, distinct weight values; and
whether the thief's copy is worth stealing (``split_accuracy``, ``is_theft``).

"Weights" are the ``weight`` tensors of every ``nn.Conv2d`` and ``nn.Linear`` (biases, BatchNorm and
other parameters excluded), the tensors that pruning and int8 quantization touch.

Example::

    attacked = prune(model, 0.01)
    measure.changed_fraction(model, attacked), measure.sparsity(attacked)   # ~0.01, 0.01
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnmark.errors import ArgumentError
from nnmark.models import accuracy

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
THEFT_MARGIN = 5.0
"""Percentage points of test accuracy a copy may lose against its victim and still count as a theft."""
_POINTS_DIGITS = 9
"""Points are compared rounded to this many decimals, so that 0.85 against 0.90 loses exactly 5 points."""


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every ``nn.Conv2d`` / ``nn.Linear`` of ``model``, in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` reinterpreted as integers of its element size, so -0.0 != 0.0 and NaN == the same NaN."""
    return t.detach().contiguous().view(_INT_OF_SIZE[t.element_size()])


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], kind: str) -> tuple[int, int]:
    """(elements whose bits differ, all elements) over tensors of the same names, shapes and dtypes."""
    if a.keys() != b.keys():
        raise ArgumentError(f"the models have different {kind}s: {sorted(a.keys() ^ b.keys())}")
    total = changed = 0
    for name, p in a.items():
        q = b[name]
        if p.shape != q.shape or p.dtype != q.dtype:
            raise ArgumentError(f"{kind} {name}: {p.dtype}{tuple(p.shape)} before but {q.dtype}{tuple(q.shape)} after")
        changed += int((_bits(p) != _bits(q)).sum())
        total += p.numel()
    return changed, total


def changed_fraction(before: nn.Module, after: nn.Module) -> float:
    """Fraction of all parameter elements of ``after`` whose bits differ from ``before`` (buffers not counted).

    Both models must have the same parameter names, shapes and dtypes (else ArgumentError); a model with
    packed quantized layers (``quantize_dynamic_torch``) has other parameters and cannot be compared.
    """
    changed, total = _changed(dict(before.named_parameters()), dict(after.named_parameters()), "parameter")
    if total == 0:
        raise ArgumentError("the models have no parameters")
    return changed / total


def changed_buffer_fraction(before: nn.Module, after: nn.Module) -> float:
    """Fraction of floating-point buffer elements (BatchNorm running statistics) whose bits differ; 0.0 if none."""
    def floats(m: nn.Module) -> dict[str, torch.Tensor]:
        return {n: t for n, t in m.named_buffers() if t.is_floating_point()}

    changed, total = _changed(floats(before), floats(after), "buffer")
    return changed / total if total else 0.0


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    layers = weight_layers(model)
    if not layers:
        raise ArgumentError("the model has no Conv2d or Linear layer")
    return {name: m.weight.detach() for name, m in layers}


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among all Conv2d/Linear weight elements of ``model`` together."""
    ws = _weights(model).values()
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each Conv2d/Linear weight, keyed by module name."""
    return {name: int((w == 0).sum()) / w.numel() for name, w in _weights(model).items()}


def distinct_values(model: nn.Module, granularity: str = "tensor") -> dict[str, list[int]]:
    """Number of distinct values in each Conv2d/Linear weight, keyed by module name.

    ``granularity="tensor"`` gives one count per weight tensor; ``"channel"`` one count per output
    channel (dim 0). An int8-quantized weight has at most 255 per tensor (per channel in channel mode).
    """
    if granularity not in ("tensor", "channel"):
        raise ArgumentError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    out = {}
    for name, w in _weights(model).items():
        rows = w.reshape(1, -1) if granularity == "tensor" else w.reshape(w.shape[0], -1)
        s = rows.sort(dim=1).values
        out[name] = (1 + (s[:, 1:] != s[:, :-1]).sum(dim=1)).tolist()
    return out


def split_accuracy(model: nn.Module, split: object | None) -> float | None:
    """``model``'s accuracy on ``split`` (``.x``, ``.y``; a test split: what a thief's copy is worth), None without."""
    return None if split is None else accuracy(model, split)


@dataclass(frozen=True)
class AccuracyReport:
    """What an attack registered with ``reports=ACCURACY`` reports: the copy's test accuracy (None without a split)."""

    test_accuracy: float | None

    def __str__(self) -> str:
        return "" if self.test_accuracy is None else f"copy's test accuracy {self.test_accuracy:.2%}"


def is_theft(victim_acc: float, copy_acc: float, margin: float = THEFT_MARGIN) -> bool:
    """Whether a copy counts as stolen: its accuracy (in [0, 1]) is at least the victim's minus ``margin`` points.

    A copy that lost more is no longer worth stealing, so an ownership check need not catch it.
    """
    if not (0 <= victim_acc <= 1 and 0 <= copy_acc <= 1) or not margin >= 0:
        raise ArgumentError(f"need accuracies in [0, 1] and margin >= 0 points, got {victim_acc}, {copy_acc}, {margin}")
    return round(copy_acc * 100, _POINTS_DIGITS) >= round(victim_acc * 100 - margin, _POINTS_DIGITS)
