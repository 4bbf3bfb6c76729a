"""Execution environments: named ways to run the same weights with other numerics.

Each environment turns a model into an oracle. Fragile samples must stand clear of the noise
between environments (a float64 run or a one-sample-per-call run of an untouched model must not
look tampered); telltale samples are made to tell them apart.

Besides torch's own knobs (``TorchOracle`` options) there are environments that run elsewhere:
"torch-compile" (``torch.compile``, inductor on the CPU; compiled when the oracle is built, so a
machine without a working C compiler lists it as unavailable with the error's first line),
"onnxruntime", "onnxruntime-basic", "onnxruntime-noopt" (ONNX Runtime CPU at graph optimisation
levels ORT_ENABLE_ALL, ORT_ENABLE_BASIC, ORT_DISABLE_ALL; ``OnnxOracle``; needs ``nnmark[onnx]``)
and "onednn-avx2", "onednn-sse41", "onednn-avx512-core" (``ONEDNN_MAX_CPU_ISA`` caps, which must be
set before torch loads, so the model runs in a worker subprocess: ``WorkerOracle``; close the
oracle, or let garbage collection or interpreter exit stop the worker). ONNX Runtime and worker
environments give probabilities and labels but no gradients.

``KNOWN`` holds every environment nnmark can describe; ``ENVIRONMENTS`` those whose requirements
this machine meets (e.g. "cuda" only with a CUDA device). :func:`available` lists every known one
with ``available`` True/False and the reason, and, given a model, also tries to build each
environment's oracle for it (a model TorchScript cannot trace is reported, not raised)::

    for status in envs.available(model, (1, 28, 28)):
        print(status.name, status.available, status.reason)
    oracle = envs.get("float64").oracle(model, (1, 28, 28))
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from nnmark.errors import ArgumentError, NnmarkError, first_line
from nnmark.oracles import Oracle, TorchOracle
from nnmark.oracles import onnx as onnx_oracle
from nnmark.oracles.worker import WorkerOracle

Factory = Callable[..., Oracle]
"""Builds an environment's oracle: ``factory(model, input_shape, **options, **kwargs)``."""


def _always() -> str | None:
    return None


def _needs_cuda() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device (or torch built without CUDA)"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def _needs_cpu(*flags: str) -> Callable[[], str | None]:
    """A requirement: the CPU has every one of ``flags`` (as /proc/cpuinfo names them)."""

    def requirement() -> str | None:
        missing = [f for f in flags if f not in _cpu_flags()]
        return f"the CPU lacks {', '.join(missing)}" if missing else None

    return requirement


def _compiled(model: torch.nn.Module, input_shape: tuple[int, int, int], **kwargs) -> TorchOracle:
    """A ``TorchOracle`` over ``torch.compile`` of a copy of ``model``, compiled now by one forward pass."""
    try:
        with warnings.catch_warnings():  # inductor's imports warn that torch.jit APIs are deprecated
            warnings.filterwarnings("ignore", r".*torch\.jit\.\w+` is deprecated", DeprecationWarning)
            compiled = torch.compile(copy.deepcopy(model).eval())
            with torch.no_grad():
                compiled(torch.zeros(1, *input_shape))
    except Exception as e:  # a compiler failure can surface as almost any exception type
        raise NnmarkError(f"torch.compile failed: {first_line(e)}") from e
    return TorchOracle(compiled, input_shape, **kwargs)


@dataclass(frozen=True)
class Environment:
    """A named oracle factory with its options (default: ``TorchOracle`` numerics options).

    ``requirement`` returns why this machine cannot run the environment, or None when it can.
    """

    name: str
    description: str
    options: dict = field(default_factory=dict)
    requirement: Callable[[], str | None] = _always
    factory: Factory = TorchOracle

    def oracle(self, model: torch.nn.Module, input_shape: tuple[int, int, int], **kwargs) -> Oracle:
        """An oracle running ``model`` in this environment; ``NnmarkError`` if it cannot run here or on it.

        ``kwargs`` (e.g. ``budget``, ``num_classes``) go to the factory.
        """
        reason = self.requirement()
        if reason is not None:
            raise NnmarkError(f"environment {self.name!r} is not available here: {reason}")
        try:
            return self.factory(model, input_shape, **self.options, **kwargs)
        except NnmarkError as e:
            raise NnmarkError(f"environment {self.name!r} cannot run this model: {e}") from e
        except (RuntimeError, torch.jit.Error) as e:
            raise NnmarkError(f"environment {self.name!r} cannot run this model: {first_line(e)}") from e


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
        Environment("torch-compile", "torch.compile (inductor, CPU), float32", {}, _always, _compiled),
        Environment("onnxruntime", "ONNX Runtime CPU, ORT_ENABLE_ALL graph optimisations",
                    {"optimization": "all"}, onnx_oracle.requirement, onnx_oracle.OnnxOracle),
        Environment("onnxruntime-basic", "ONNX Runtime CPU, ORT_ENABLE_BASIC graph optimisations",
                    {"optimization": "basic"}, onnx_oracle.requirement, onnx_oracle.OnnxOracle),
        Environment("onnxruntime-noopt", "ONNX Runtime CPU, ORT_DISABLE_ALL (no graph optimisations)",
                    {"optimization": "disabled"}, onnx_oracle.requirement, onnx_oracle.OnnxOracle),
        Environment("onednn-avx2", "torch float32 in a worker with ONEDNN_MAX_CPU_ISA=AVX2",
                    {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}, _needs_cpu("avx2"), WorkerOracle),
        Environment("onednn-sse41", "torch float32 in a worker with ONEDNN_MAX_CPU_ISA=SSE41",
                    {"env": {"ONEDNN_MAX_CPU_ISA": "SSE41"}}, _needs_cpu("sse4_1"), WorkerOracle),
        Environment("onednn-avx512-core", "torch float32 in a worker with ONEDNN_MAX_CPU_ISA=AVX512_CORE",
                    {"env": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}},
                    _needs_cpu("avx512f", "avx512bw", "avx512vl", "avx512dq"), WorkerOracle),
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


def probe(
    model: torch.nn.Module | None = None, input_shape: tuple[int, int, int] | None = None
) -> Iterator[tuple[Status, Oracle | None]]:
    """Each known environment's status, with its oracle for ``model`` when it can run it (else None).

    Without a model only the machine's requirements are checked (every oracle is None). With one, every
    available environment builds its oracle and is asked one all-zero input, so a model an environment
    cannot run (e.g. one TorchScript cannot trace) is listed as unavailable with the error's first line.
    The caller closes the oracles it is given.
    """
    if (model is None) != (input_shape is None):
        raise ArgumentError("pass both model and input_shape, or neither")
    for env in KNOWN.values():
        reason, oracle = env.requirement(), None
        if reason is None and model is not None:
            try:
                oracle = env.oracle(model, input_shape)
                oracle.labels(torch.zeros(1, *input_shape))
            except NnmarkError as e:
                reason, oracle = str(e), None
        yield Status(env.name, env.description, reason is None, reason or ""), oracle


def available(model: torch.nn.Module | None = None, input_shape: tuple[int, int, int] | None = None) -> list[Status]:
    """Every known environment with whether it can run here (and ``model``, if given) and why not.

    Never raises for an environment that cannot; ``probe`` does the checking.
    """
    out = []
    for status, oracle in probe(model, input_shape):
        if oracle is not None:
            oracle.close()
        out.append(status)
    return out
