"""Execution environments: named ways to run the same weights with other numerics.

Each environment turns a model into an oracle. Fragile samples must stand clear of the noise
between environments (a float64 run or a one-sample-per-call run of an untouched model must not
look tampered); telltale samples are made to tell them apart.

``KNOWN`` holds every environment nnmark can describe; ``ENVIRONMENTS`` those whose requirements
this machine meets (e.g. "cuda" only with a CUDA device). :func:`available` lists every known one
with ``available`` True/False and the reason, and, given a model, also tries to build each
environment's oracle for it (a model TorchScript cannot trace is reported, not raised)::

    for status in envs.available(model, (1, 28, 28)):
        print(status.name, status.available, status.reason)
    oracle = envs.get("float64").oracle(model, (1, 28, 28))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from nnmark.errors import NnmarkError
from nnmark.oracles import TorchOracle


def _always() -> str | None:
    return None


def _needs_cuda() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device (or torch built without CUDA)"


@dataclass(frozen=True)
class Environment:
    """A named set of ``TorchOracle`` numerics options.

    ``requirement`` returns why this machine cannot run the environment, or None when it can.
    """

    name: str
    description: str
    options: dict = field(default_factory=dict)
    requirement: Callable[[], str | None] = _always

    def oracle(self, model: torch.nn.Module, input_shape: tuple[int, int, int], **kwargs) -> TorchOracle:
        """An oracle running ``model`` in this environment; ``NnmarkError`` if it cannot run here or on it."""
        reason = self.requirement()
        if reason is not None:
            raise NnmarkError(f"environment {self.name!r} is not available here: {reason}")
        try:
            return TorchOracle(model, input_shape, **self.options, **kwargs)
        except (RuntimeError, torch.jit.Error) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NnmarkError(f"environment {self.name!r} cannot run this model: {first}") from e


@dataclass(frozen=True)
class Status:
    """Whether an environment can run here (and on a given model), and why not."""

    name: str
    description: str
    available: bool
    reason: str


KNOWN: dict[str, Environment] = {
    e.name: e
    for e in (
        Environment("float32", "torch float32, default kernels"),
        Environment("float64", "torch float64", {"dtype": torch.float64}),
        Environment("mkldnn-off", "torch float32 with oneDNN (mkldnn) disabled", {"mkldnn": False}),
        Environment("batch1", "torch float32, one sample per forward call", {"batch_size": 1}),
        Environment("bf16-autocast", "torch float32 weights under CPU bfloat16 autocast", {"autocast_bf16": True}),
        Environment("channels-last", "torch float32, model and inputs in channels_last format", {"channels_last": True}),
        Environment("torchscript-frozen", "torch.jit.trace + torch.jit.freeze, float32", {"torchscript": True}),
        Environment("cuda", "torch float32 on the first CUDA device", {"device": "cuda"}, _needs_cuda),
    )
}

ENVIRONMENTS: dict[str, Environment] = {name: e for name, e in KNOWN.items() if e.requirement() is None}
"""The known environments whose requirements this machine meets."""


def get(name: str) -> Environment:
    """The environment called ``name``; ``NnmarkError`` if unknown or not available on this machine."""
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name]
    if name in KNOWN:
        raise NnmarkError(f"environment {name!r} is not available here: {KNOWN[name].requirement()}")
    raise NnmarkError(f"unknown environment {name!r}; known: {', '.join(KNOWN)}")


def available(model: torch.nn.Module | None = None, input_shape: tuple[int, int, int] | None = None) -> list[Status]:
    """Every known environment with whether it can run here and why not; never raises for one that cannot.

    With ``model`` and ``input_shape`` it also builds each environment's oracle for that model and asks it
    one all-zero input, so a model an environment cannot run (e.g. one TorchScript cannot trace) is listed
    as unavailable with the error's first line.
    """
    if (model is None) != (input_shape is None):
        raise ValueError("pass both model and input_shape, or neither")
    out = []
    for env in KNOWN.values():
        reason = env.requirement()
        if reason is None and model is not None:
            try:
                env.oracle(model, input_shape).labels(torch.zeros(1, *input_shape))
            except NnmarkError as e:
                reason = str(e)
        out.append(Status(env.name, env.description, reason is None, reason or ""))
    return out
