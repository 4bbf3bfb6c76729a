"""The architecture registry, model configs, and safetensors checkpoints (never pickle).

A checkpoint is a safetensors file holding the model's state_dict (parameters and buffers),
with ``ModelConfig.to_json()`` in the header metadata under ``"nnmark.model"``. Loading reads
the header alone first, bounds the config (``MAX_*`` below), builds the model on the meta device
(nothing allocated, nothing run) and checks every tensor the header declares against it and
against the file's size; only then does it read the body and load the tensors strictly.
"""

import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
import torch
from torch import nn

from nnmark import _safetensors
from nnmark._io import atomic_write_bytes
from nnmark.errors import ModelError
from nnmark.models.lenet import LeNet5
from nnmark.models.resnet import cifar_resnet, resnet18
from nnmark.models.resnet_imagenet import imagenet_resnet50
from nnmark.models.vgg import VGG
from nnmark.models.vit import vit

METADATA_KEY = "nnmark.model"

# Bounds on a model config, checked before anything is built, so a hostile config cannot make nnmark allocate.
MAX_INPUT_CHANNELS = 64
MAX_INPUT_SIDE = 4096  # H and W
MAX_NUM_CLASSES = 100_000
MAX_WIDTH = 16.0
MAX_PARAMETERS = 1_000_000_000  # elements of the state_dict (4 GB in float32)
MAX_HEADER_BYTES = 10_000_000  # a checkpoint header holds about 100 bytes per tensor

_BUILDERS: dict[str, Callable[[tuple[int, int, int], int, float], nn.Module]] = {
    "lenet5": LeNet5,
    "resnet20": lambda shape, k, width: cifar_resnet(20, shape, k, width),
    "resnet32": lambda shape, k, width: cifar_resnet(32, shape, k, width),
    "resnet18": resnet18,
    "vgg11": lambda shape, k, width: VGG("vgg11", shape, k, width),
    "vgg16": lambda shape, k, width: VGG("vgg16", shape, k, width),
    "resnet50": imagenet_resnet50,
    "vit_s16": lambda shape, k, width: vit("vit_s16", shape, k, width),
    "vit_ti16": lambda shape, k, width: vit("vit_ti16", shape, k, width),
}
ARCHITECTURES: tuple[str, ...] = tuple(_BUILDERS)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_spec(arch: object, input_shape: object, num_classes: object, width: object) -> tuple[int, int, int]:
    """Raise ModelError unless the arguments describe a buildable model; return the shape as a tuple."""
    if not isinstance(arch, str) or arch not in _BUILDERS:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    limits = (MAX_INPUT_CHANNELS, MAX_INPUT_SIDE, MAX_INPUT_SIDE)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3 or not all(
        _is_int(d) and 1 <= d <= most for d, most in zip(input_shape, limits)
    ):
        raise ModelError(f"input shape must be 3 integers (C, H, W) with 1 <= C <= {MAX_INPUT_CHANNELS} and "
                         f"1 <= H, W <= {MAX_INPUT_SIDE}, got {input_shape!r}")
    if not _is_int(num_classes) or not 2 <= num_classes <= MAX_NUM_CLASSES:
        raise ModelError(f"num_classes must be an integer in [2, {MAX_NUM_CLASSES}], got {num_classes!r}")
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not (math.isfinite(width) and
                                                                              0 < width <= MAX_WIDTH):
        raise ModelError(f"width must be a number in (0, {MAX_WIDTH:g}], got {width!r}")
    return tuple(input_shape)


def _meta_model(arch: str, shape: tuple[int, int, int], num_classes: int, width: float) -> nn.Module:
    """``arch`` built on the meta device (shapes only: nothing allocated, nothing run); ModelError when its
    state_dict would hold more than MAX_PARAMETERS elements."""
    with torch.device("meta"):
        model = _BUILDERS[arch](shape, num_classes, float(width))
    size = sum(t.numel() for t in model.state_dict().values())
    if size > MAX_PARAMETERS:
        raise ModelError(f"{arch} for input {shape} with {num_classes} classes at width {width:g} has {size:,} "
                         f"parameters, above the limit of {MAX_PARAMETERS:,}")
    return model


def build(arch: str, input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0) -> nn.Module:
    """A freshly initialised ``arch`` (one of ARCHITECTURES) for (C, H, W) inputs; returns logits.

    ModelError when an argument is outside its ``MAX_*`` bound or the model would exceed MAX_PARAMETERS.
    """
    shape = _check_spec(arch, input_shape, num_classes, width)
    _meta_model(arch, shape, num_classes, width)
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


def _meta_model_for(config: ModelConfig) -> nn.Module:
    """The model ``config`` describes, on the meta device."""
    return _meta_model(config.arch, config.input_shape, config.num_classes, config.width)


_Specs = dict[str, tuple[str, tuple[int, ...]]]


def _specs(tensors: dict[str, torch.Tensor]) -> _Specs:
    """Name -> (safetensors dtype code, shape) of ``tensors``."""
    return {n: (_safetensors.DTYPE_CODES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for n, t in tensors.items()}


def _check_tensors(expected: _Specs, got: _Specs) -> None:
    """Raise ModelError naming the first few missing, unexpected, or mis-shaped/-typed tensors."""
    problems = [f"missing {n}" for n in sorted(expected.keys() - got.keys())]
    problems += [f"unexpected {n}" for n in sorted(got.keys() - expected.keys())]
    for n in sorted(expected.keys() & got.keys()):
        if expected[n] != got[n]:
            (ed, es), (gd, gs) = expected[n], got[n]
            problems.append(f"{n} is {gd} {gs}, expected {ed} {es}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelError("; ".join(problems[:3]) + more)


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Raise ModelError unless the tensors ``got`` have exactly the names, dtypes and shapes of the state dict
    ``expected`` (a strict ``load_state_dict`` would succeed), naming the first few differences."""
    _check_tensors(_specs(expected), _specs(got))


def save(model: nn.Module, config: ModelConfig, path: str | os.PathLike) -> None:
    """Write ``model``'s state_dict and ``config`` to a safetensors file at ``path``, atomically."""
    tensors = {n: t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}
    try:
        check_state(_meta_model_for(config).state_dict(), tensors)
    except ModelError as e:
        raise ModelError(f"model does not match config {config.arch}: {e}") from None
    atomic_write_bytes(path, safetensors_save(tensors, metadata={METADATA_KEY: config.to_json()}))


def load(path: str | os.PathLike) -> tuple[nn.Module, ModelConfig]:
    """Read a checkpoint written by ``save``: the rebuilt model (in eval mode) and its config.

    The header is checked (length, config bounds, every tensor's name, dtype, shape and extent) before
    the body is read; any problem is a ModelError naming ``path``.
    """
    try:
        with open(path, "rb") as fh:
            return _read_checkpoint(fh)
    except OSError as e:
        raise ModelError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except ModelError as e:
        raise ModelError(f"bad checkpoint {path}: {e}") from None


def _read_checkpoint(fh: BinaryIO) -> tuple[nn.Module, ModelConfig]:
    """The model and config of the open checkpoint ``fh``, its header checked before its body is read."""
    try:
        head = read_header(fh)
    except _safetensors.HeaderError as e:
        raise ModelError(f"not a valid safetensors checkpoint: {e}") from None
    metadata = head.metadata
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise ModelError(f"no {METADATA_KEY!r} metadata; was it written by nnmark.models.save?")
    config = ModelConfig.from_json(metadata[METADATA_KEY])
    model = _meta_model_for(config)  # a hostile config allocates nothing before the tensors match it
    model.load_state_dict(read_state(fh, head, model.state_dict()), strict=True, assign=True)
    return model.eval(), config


@dataclass(frozen=True)
class Header:
    """A safetensors file's checked header: the file's size, the raw header, its tensor entries and metadata."""

    size: int
    raw: bytes
    entries: dict
    metadata: object


def read_header(fh: BinaryIO) -> Header:
    """The header of the open safetensors file ``fh``: its length bounded by MAX_HEADER_BYTES, every entry
    well-formed and inside the body, the body ending with the last tensor; HeaderError otherwise."""
    size = _safetensors.file_size(fh)
    raw, header = _safetensors.read_header(fh, size, MAX_HEADER_BYTES)
    _safetensors.check_entries(header, size - _safetensors.LENGTH_BYTES - len(raw))
    metadata = header.pop("__metadata__", None)
    return Header(size, raw, header, metadata)


def read_state(fh: BinaryIO, head: Header, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of the open safetensors file ``fh`` whose header is ``head``, read only after the header's
    names, dtypes and shapes are those of the state dict ``expected`` (ModelError naming the differences)."""
    _check_tensors(_specs(expected), {n: (e["dtype"], tuple(e["shape"])) for n, e in head.entries.items()})
    fh.seek(0)
    data = fh.read(head.size)
    header = data[_safetensors.LENGTH_BYTES : _safetensors.LENGTH_BYTES + len(head.raw)]
    if len(data) != head.size or header != head.raw:
        raise ModelError("the file changed while it was read")
    try:
        return safetensors_load(data)
    except Exception as e:  # safetensors raises its own error types (and others) for corrupt input
        raise ModelError(f"not a valid safetensors file: {e}") from None


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
