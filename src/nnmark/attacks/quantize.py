"""8-bit quantization attacks (Gao et al. sec. 4.1, Table 4: "8-bit quantize").

Paper: Gao et al., "Sample-pairing fragile watermark", Table 4; quantization after Gong et al. 2014 and
Xiao et al. 2023 (RobustMQ). The paper does not say which 8-bit scheme it used; nnmark offers three.

``quantize_int8`` -- symmetric int8 fake-quantization of every Conv2d/Linear weight (biases, BatchNorm
and buffers untouched), per tensor or per output channel (dim 0):

    scale = max|w| / 127,    w_q = clamp(round(w / scale), -127, 127) * scale

so |w - w_q| <= scale / 2 and a tensor (channel) holds at most 255 distinct values. -128 is unused, which
keeps the grid symmetric about 0 (as PyTorch's symmetric qint8 weight observers do). An all-zero tensor
(channel) stays zero. The model stays float32; only the values of its weights change.

``quantize_dynamic_torch`` -- PyTorch's own post-training dynamic quantization
(``torch.ao.quantization.quantize_dynamic``, ``nn.Linear`` -> qint8 per-tensor weights, activations
quantized on the fly, float in and out). Conv2d layers stay float. torch 2.13 still runs it but warns
that ``torch.ao.quantization`` is deprecated (moving to torchao); those warnings are silenced here.
The result holds packed quantized layers, so ``measure.changed_fraction`` cannot compare it.

``quantize_static_torch`` -- PyTorch's eager-mode static post-training quantization: the model is wrapped
as ``Sequential(QuantStub, model, DeQuantStub)``, observed with the default qconfig of the current
quantized engine (x86 here: per-channel symmetric qint8 weights, histogram-observed quint8
activations), calibrated by one forward pass over ``calibration_x`` and converted; every Conv2d/Linear
then runs in int8, float in and out. Eager mode needs every operation of ``forward`` to take quantized
tensors: LeNet-5 and VGG run; a ResNet's skip addition (``a + b``) does not, and raises ModelError.
The converted model has no parameters (``models.accuracy`` cannot find its device; query it directly).

Inputs of the returned models: (N, C, H, W) float32 in [0, 1], as for the original. No randomness.

Example::

    attacked = quantize_int8(model, granularity="channel")
    measure.distinct_values(attacked, "channel")   # every count <= 255
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn
from torch.ao import quantization as tq

from nnmark.attacks.measure import weight_layers
from nnmark.attacks.registry import register_attack
from nnmark.errors import ArgumentError, InputError, ModelError
from nnmark.oracles import check_inputs

Granularity = Literal["tensor", "channel"]
DEFAULT_GRANULARITY = "tensor"
QMAX = 127


def int8_scale(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """scale = max|w| / 127 of the whole tensor (shape ()) or of each output channel (shape (C_out, 1, ...))."""
    if granularity == "tensor":
        return w.abs().max() / QMAX
    return w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape(-1, *([1] * (w.dim() - 1))) / QMAX


def fake_quantize(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """w_q = clamp(round(w / scale), -127, 127) * scale; entries with scale 0 (all-zero weights) stay 0."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, torch.clamp(torch.round(w / safe), -QMAX, QMAX) * safe, torch.zeros_like(w))


@register_attack("quantize", summary="Symmetric int8 weight quantization, dequantized back to float32.",
                 applies_to="models with Conv2d or Linear layers", needs=("layers",))
def quantize_int8(model: nn.Module, *, granularity: Granularity = DEFAULT_GRANULARITY) -> nn.Module:
    """Return a copy of ``model`` whose Conv2d/Linear weights are int8 fake-quantized, in eval mode.

    Args:
        granularity: one scale per weight tensor (tensor) or per output channel (channel).
    """
    if granularity not in ("tensor", "channel"):
        raise ArgumentError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    attacked = copy.deepcopy(model)
    layers = weight_layers(attacked)
    if not layers:
        raise ArgumentError("the model has no Conv2d or Linear layer to quantize")
    with torch.no_grad():
        for _, m in layers:
            m.weight.copy_(fake_quantize(m.weight, int8_scale(m.weight, granularity)))
    return attacked.eval()


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    """Silence torch 2.13 deprecation warnings: ``torch.ao.quantization``, quantized tensors, ``reduce_range``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="torch.quantize_per_", category=UserWarning)
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max", category=UserWarning)
        yield


def quantize_dynamic_torch(model: nn.Module) -> nn.Module:
    """Return PyTorch's dynamic-quantized copy of ``model`` (``nn.Linear`` -> qint8), in eval mode."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ArgumentError("the model has no Linear layer for dynamic quantization")
    with _quiet_deprecation():
        quantized = tq.quantize_dynamic(
            copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8, inplace=True
        )
    return quantized.eval()


def quantize_static_torch(model: nn.Module, calibration_x: torch.Tensor) -> nn.Module:
    """Return PyTorch's static int8 copy of ``model``, calibrated on ``calibration_x`` (N, C, H, W) in [0, 1]."""
    if not isinstance(calibration_x, torch.Tensor) or calibration_x.dim() != 4:
        raise InputError(f"calibration_x must be a (N, C, H, W) tensor, got {getattr(calibration_x, 'shape', None)}")
    check_inputs(calibration_x, tuple(calibration_x.shape[1:]))
    wrapped = nn.Sequential(tq.QuantStub(), copy.deepcopy(model), tq.DeQuantStub()).eval()
    wrapped.qconfig = tq.get_default_qconfig(torch.backends.quantized.engine)
    with _quiet_deprecation(), torch.no_grad():
        observed = tq.prepare(wrapped)
        observed(calibration_x)
        quantized = tq.convert(observed)
        try:
            quantized(calibration_x[:1])
        except (NotImplementedError, RuntimeError) as exc:
            reason = str(exc).strip().split(". ")[0] or type(exc).__name__
            raise ModelError(f"eager static quantization cannot run this model: {reason}") from exc
    return quantized.eval()
