"""The architecture registry, model configs, and safetensors checkpoints (never pickle).

A checkpoint is a safetensors file holding the model's state_dict (parameters and buffers),
with ``ModelConfig.to_json()`` in the header metadata under ``"nnmark.model"``; loading
rebuilds the model from that config and loads the tensors strictly.
"""

import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
import torch
from torch import nn

from nnmark._io import atomic_write_bytes
from nnmark.errors import ModelError
from nnmark.models.lenet import LeNet5
from nnmark.models.resnet import cifar_resnet, resnet18
from nnmark.models.vgg import VGG

METADATA_KEY = "nnmark.model"

_BUILDERS: dict[str, Callable[[tuple[int, int, int], int, float], nn.Module]] = {
    "lenet5": LeNet5,
    "resnet20": lambda shape, k, width: cifar_resnet(20, shape, k, width),
    "resnet32": lambda shape, k, width: cifar_resnet(32, shape, k, width),
    "resnet18": resnet18,
    "vgg11": lambda shape, k, width: VGG("vgg11", shape, k, width),
    "vgg16": lambda shape, k, width: VGG("vgg16", shape, k, width),
}
ARCHITECTURES: tuple[str, ...] = tuple(_BUILDERS)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_spec(arch: object, input_shape: object, num_classes: object, width: object) -> tuple[int, int, int]:
    """Raise ModelError unless the arguments describe a buildable model; return the shape as a tuple."""
    if not isinstance(arch, str) or arch not in _BUILDERS:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3 or not all(
        _is_int(d) and d >= 1 for d in input_shape
    ):
        raise ModelError(f"input shape must be 3 positive integers (C, H, W), got {input_shape!r}")
    if not _is_int(num_classes) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not (math.isfinite(width) and width > 0):
        raise ModelError(f"width must be a finite number > 0, got {width!r}")
    return tuple(input_shape)


def build(arch: str, input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0) -> nn.Module:
    """A freshly initialised ``arch`` (one of ARCHITECTURES) for (C, H, W) inputs; returns logits."""
    shape = _check_spec(arch, input_shape, num_classes, width)
    return _BUILDERS[arch](shape, num_classes, float(width))


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model, plus where it came from; validated on creation."""

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    width: float = 1.0
    data: str | None = None
    accuracy: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        self.input_shape = _check_spec(self.arch, self.input_shape, self.num_classes, self.width)
        self.width = float(self.width)
        if self.data is not None and not isinstance(self.data, str):
            raise ModelError(f"data must be a dataset spec string or null, got {self.data!r}")
        acc = self.accuracy
        if acc is not None and (not isinstance(acc, (int, float)) or isinstance(acc, bool) or not 0 <= acc <= 1):
            raise ModelError(f"accuracy must be a number in [0, 1] or null, got {acc!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ModelError(f"seed must be an integer or null, got {self.seed!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        try:
            fields = json.loads(s)
        except (TypeError, ValueError) as e:
            raise ModelError(f"model config is not valid JSON: {e}") from None
        if not isinstance(fields, dict):
            raise ModelError("model config must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(fields) - names):
            raise ModelError(f"model config has unknown field(s): {', '.join(unknown)}")
        if missing := sorted({"arch", "input_shape", "num_classes"} - set(fields)):
            raise ModelError(f"model config lacks field(s): {', '.join(missing)}")
        return cls(**fields)


def _build_for(config: ModelConfig) -> nn.Module:
    return build(config.arch, config.input_shape, config.num_classes, width=config.width)


def _check_tensors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Raise ModelError naming the first few missing, unexpected, or mis-shaped/-typed tensors."""
    problems = [f"missing {n}" for n in sorted(expected.keys() - got.keys())]
    problems += [f"unexpected {n}" for n in sorted(got.keys() - expected.keys())]
    for n in sorted(expected.keys() & got.keys()):
        e, g = expected[n], got[n]
        if e.shape != g.shape or e.dtype != g.dtype:
            problems.append(f"{n} is {g.dtype} {tuple(g.shape)}, expected {e.dtype} {tuple(e.shape)}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelError("; ".join(problems[:3]) + more)


def save(model: nn.Module, config: ModelConfig, path: str | os.PathLike) -> None:
    """Write ``model``'s state_dict and ``config`` to a safetensors file at ``path``, atomically."""
    tensors = {n: t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}
    with torch.device("meta"):
        reference = _build_for(config).state_dict()  # shapes only: no memory, no init cost
    try:
        _check_tensors(reference, tensors)
    except ModelError as e:
        raise ModelError(f"model does not match config {config.arch}: {e}") from None
    atomic_write_bytes(path, safetensors_save(tensors, metadata={METADATA_KEY: config.to_json()}))


def load(path: str | os.PathLike) -> tuple[nn.Module, ModelConfig]:
    """Read a checkpoint written by ``save``: the rebuilt model (in eval mode) and its config."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    try:
        tensors = safetensors_load(data)
    except Exception as e:  # safetensors raises its own error types (and others) for corrupt input
        raise ModelError(f"{path} is not a valid safetensors checkpoint: {e}") from None
    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    if METADATA_KEY not in metadata:
        raise ModelError(f"{path} has no {METADATA_KEY!r} metadata; was it written by nnmark.models.save?")
    try:
        config = ModelConfig.from_json(metadata[METADATA_KEY])
        with torch.device("meta"):  # a hostile config allocates nothing before the tensors match it
            model = _build_for(config)
        _check_tensors(model.state_dict(), tensors)
    except ModelError as e:
        raise ModelError(f"bad checkpoint {path}: {e}") from None
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval(), config


def digest(model: nn.Module) -> str:
    """SHA-256 hex of the state_dict (parameters and buffers), independent of device.

    For each name in sorted order it hashes the line ``json.dumps([name, dtype, shape,
    nbytes]) + "\\n"`` (dtype like ``"float32"``), then the tensor's raw little-endian bytes.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        shape, dtype = list(t.shape), str(t.dtype).removeprefix("torch.")
        t = t.detach().to("cpu").contiguous().reshape(-1)
        raw = t.view(torch.uint8)
        if sys.byteorder == "big" and t.element_size() > 1:
            raw = raw.view(-1, t.element_size()).flip(1).reshape(-1)
        h.update((json.dumps([name, dtype, shape, raw.numel()]) + "\n").encode())
        h.update(raw.numpy().tobytes())
    return h.hexdigest()
