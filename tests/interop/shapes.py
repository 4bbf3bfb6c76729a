"""How the interop servers serve one nnmark checkpoint: four endpoint shapes, the same weights in each.

Imported by the MLServer runtime and the KServe model, each in its server's own virtualenv, and by the
tests, which write the servers' configuration from the same table. A shape says how a request's tensor
becomes the checkpoint's (N, C, H, W) input in [0, 1] and which outputs answer it:

- ``probabilities``: FP32 NCHW in [0, 1] named "input"; FP32 "probabilities" [N, K] and INT64 "label" [N]
  (the outputs ``nnmark serve`` gives);
- ``logits``: FP32 NCHW named "input__0"; FP32 raw logits "output__0" [N, K] (Triton's PyTorch naming);
- ``nhwc-uint8``: UINT8 NHWC pixels 0-255 named "image"; the server divides by 255 and normalises with
  ``MNIST_MEAN``/``MNIST_STD`` for a network exported for normalised input (the checkpoint behind a first
  step that undoes the normalisation: the checkpoint's weights); FP32 "probabilities" [N, K];
- ``labels``: FP32 NCHW named "input"; only INT64 "label" [N, 1] (MLServer's numpy codec makes any 1-D
  output [N, 1]).

A served model may run in float64 (``dtype="float64"``): its labels are the float64 argmax and its
probabilities are sent as float32, so a telltale key tells it from the float32 one. ``served_models`` is
what every interop server serves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nnmark import models

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
DTYPES = {"float32": torch.float32, "float64": torch.float64}
WIRE_DTYPES = {"FP32": np.float32, "UINT8": np.uint8, "INT64": np.int64}
NOISED = "-noised"
FLOAT64_MODEL = "probabilities-float64"


@dataclass(frozen=True)
class Shape:
    """One endpoint shape.

    Attributes:
        input_name: the input tensor's name.
        layout: "NCHW" or "NHWC".
        datatype: "FP32" (values in [0, 1]) or "UINT8" (pixels 0-255).
        normalize: the server's (mean, std) after scaling pixels to [0, 1], or None.
        outputs: (name, kind) of each output; kind is "probabilities", "logits", "label" ([N]) or
            "label-column" ([N, 1]).
    """

    input_name: str
    layout: str
    datatype: str
    normalize: tuple[float, float] | None
    outputs: tuple[tuple[str, str], ...]


SHAPES = {
    "probabilities": Shape("input", "NCHW", "FP32", None, (("probabilities", "probabilities"), ("label", "label"))),
    "logits": Shape("input__0", "NCHW", "FP32", None, (("output__0", "logits"),)),
    "nhwc-uint8": Shape("image", "NHWC", "UINT8", (MNIST_MEAN, MNIST_STD), (("probabilities", "probabilities"),)),
    "labels": Shape("input", "NCHW", "FP32", None, (("label", "label-column"),)),
}


def served_models(clean: str, noised: str) -> list[dict]:
    """{name, checkpoint, shape, dtype} of each served model: every shape of ``clean`` under the shape's name,
    of ``noised`` under ``<shape>-noised``, and ``clean``'s probabilities in float64 under ``FLOAT64_MODEL``."""
    entries = [{"name": shape + suffix, "checkpoint": checkpoint, "shape": shape, "dtype": "float32"}
               for shape in SHAPES for suffix, checkpoint in (("", clean), (NOISED, noised))]
    return entries + [{"name": FLOAT64_MODEL, "checkpoint": clean, "shape": "probabilities", "dtype": "float64"}]


def datatype(array: np.ndarray) -> str:
    """The OIP datatype of ``array`` ("FP32", "UINT8", "INT64")."""
    return next(name for name, dtype in WIRE_DTYPES.items() if array.dtype == dtype)


def wire_dims(shape: Shape, chw: tuple[int, int, int]) -> list[int]:
    """One input's dimensions in the shape's layout."""
    c, h, w = chw
    return [c, h, w] if shape.layout == "NCHW" else [h, w, c]


def metadata(shape: Shape, chw: tuple[int, int, int], classes: int) -> tuple[list[dict], list[dict]]:
    """The OIP v2 metadata (inputs, outputs) of ``shape`` for a model of input (C, H, W) and K classes."""
    inputs = [{"name": shape.input_name, "datatype": shape.datatype, "shape": [-1, *wire_dims(shape, chw)]}]
    dims = {"probabilities": [-1, classes], "logits": [-1, classes], "label": [-1], "label-column": [-1, 1]}
    outputs = [{"name": name, "datatype": "INT64" if kind.startswith("label") else "FP32", "shape": dims[kind]}
               for name, kind in shape.outputs]
    return inputs, outputs


def to_wire(x: torch.Tensor, shape: Shape) -> np.ndarray:
    """Pixel-space queries (N, C, H, W) in [0, 1] as the shape's input tensor (what a right client sends)."""
    if shape.datatype == "UINT8":
        x = (x.double() * 255).round()
    if shape.layout == "NHWC":
        x = x.permute(0, 2, 3, 1)
    return np.ascontiguousarray(x.numpy().astype(WIRE_DTYPES[shape.datatype]))


class Normalize(torch.nn.Module):
    """(x - mean) / std, the server's normalisation; ``inverse=True``: z * std + mean, the first step of a
    network exported for normalised input that turns it back into the checkpoint's [0, 1] input."""

    def __init__(self, mean: float, std: float, inverse: bool = False):
        super().__init__()
        self.mean, self.std, self.inverse = mean, std, inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean if self.inverse else (x - self.mean) / self.std


class Served:
    """An nnmark checkpoint served in one shape: ``served(tensor) -> {output name: array}``.

    Args:
        checkpoint: an nnmark safetensors checkpoint (``nnmark.models.save``).
        shape: a key of ``SHAPES``.
        dtype: "float32" or "float64", the type the network runs in.

    Needs only ``nnmark.models`` (and torch): the servers' virtualenvs hold their own protobuf and web stack.
    Answers as ``TorchOracle`` does: one pass, labels the argmax of the logits in ``dtype``, probabilities
    their softmax widened (or narrowed) to float32.
    """

    def __init__(self, checkpoint: str, shape: str, dtype: str = "float32"):
        if shape not in SHAPES or dtype not in DTYPES:
            raise ValueError(f"shape must be one of {sorted(SHAPES)} and dtype one of {sorted(DTYPES)}")
        model, config = models.load(checkpoint)
        self.shape = SHAPES[shape]
        if self.shape.normalize is not None:
            mean, std = self.shape.normalize
            model = torch.nn.Sequential(Normalize(mean, std), Normalize(mean, std, inverse=True), model)
        self.dtype = DTYPES[dtype]
        self.model = model.to(self.dtype).eval()
        self.chw = tuple(config.input_shape)
        self.classes = config.num_classes

    def metadata(self) -> tuple[list[dict], list[dict]]:
        return metadata(self.shape, self.chw, self.classes)

    def _pixels(self, tensor: np.ndarray) -> torch.Tensor:
        """The request's tensor as (N, C, H, W) float32 in [0, 1]; ``ValueError`` if it is not the shape's."""
        expected = wire_dims(self.shape, self.chw)
        if tensor.dtype != WIRE_DTYPES[self.shape.datatype] or tensor.ndim != 4 or list(tensor.shape[1:]) != expected:
            raise ValueError(f"input {self.shape.input_name!r} must be {self.shape.datatype} {[-1, *expected]}, "
                             f"got {tensor.dtype} {list(tensor.shape)}")
        x = torch.from_numpy(np.ascontiguousarray(tensor))
        if self.shape.layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        x = x.float().contiguous()
        return x / 255 if self.shape.datatype == "UINT8" else x

    def __call__(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """The shape's outputs for one request's input tensor."""
        with torch.no_grad():
            z = self.model(self._pixels(tensor).to(self.dtype))
        labels = z.argmax(dim=1)
        answers = {"probabilities": torch.softmax(z, dim=1).float(), "logits": z.float(), "label": labels,
                   "label-column": labels[:, None]}
        return {name: answers[kind].numpy() for name, kind in self.shape.outputs}
