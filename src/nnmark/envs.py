"""Execution environments: named ways to run the same weights with other numerics.

Each environment turns a model into an oracle. Fragile samples must stand clear of the noise
between environments (a float64 run or a one-sample-per-call run of an untouched model must not
look tampered); telltale samples are made to tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nnmark.errors import NnmarkError
from nnmark.oracles import TorchOracle


@dataclass(frozen=True)
class Environment:
    """A named set of ``TorchOracle`` numerics options."""

    name: str
    description: str
    options: dict = field(default_factory=dict)

    def oracle(self, model: torch.nn.Module, input_shape: tuple[int, int, int], **kwargs) -> TorchOracle:
        return TorchOracle(model, input_shape, **self.options, **kwargs)


ENVIRONMENTS: dict[str, Environment] = {
    e.name: e
    for e in (
        Environment("float32", "torch float32, default kernels"),
        Environment("float64", "torch float64", {"dtype": torch.float64}),
        Environment("mkldnn-off", "torch float32 with oneDNN (mkldnn) disabled", {"mkldnn": False}),
        Environment("batch1", "torch float32, one sample per forward call", {"batch_size": 1}),
    )
}


def get(name: str) -> Environment:
    """The environment called ``name``; ``NnmarkError`` listing the known ones otherwise."""
    try:
        return ENVIRONMENTS[name]
    except KeyError:
        raise NnmarkError(f"unknown environment {name!r}; known: {', '.join(ENVIRONMENTS)}") from None
