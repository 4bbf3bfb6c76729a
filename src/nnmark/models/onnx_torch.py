"""An ONNX graph run by torch operators, so methods that need input gradients can use an ONNX model.

``OnnxGraph(model)`` evaluates the graph's nodes in order (ONNX lists them topologically) with the torch
function of each operator in OPS: the operators of inference-mode image classifiers (convolutions, pooling,
normalisation layers, activations, reshaping). Initializers become buffers, so ``.to(torch.float64)`` runs the
whole graph in float64. A graph with another operator, or with an attribute outside what the function supports
(e.g. asymmetric padding), raises ``Unconvertible`` naming it; the caller then keeps ONNX Runtime and says which
methods still run. Use ``convert`` (it also checks the result against ONNX Runtime on a probe batch).

Why not onnx2torch: it imports torchvision at import time, and torchvision is not a dependency of nnmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nnmark.errors import ModelError

MATCH_ATOL = 1e-4
"""Largest |logit difference| to ONNX Runtime, relative to the logits' scale (max(1, max |logit|)), on the probe."""
SOFTMAX_LAST_AXIS_OPSET = 13
PROBE_BATCH = 4
PROBE_SEED = 0


class Unconvertible(Exception):
    """The graph uses an operator or attribute OnnxGraph does not run; the message names it."""


Op = Callable[..., torch.Tensor]
_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}


def _pads(attrs: dict, rank: int) -> list[int]:
    """Symmetric ONNX pads [b1, .., bn, e1, .., en] as torch's per-dimension padding; Unconvertible otherwise."""
    if attrs.get("auto_pad", "NOTSET") != "NOTSET":
        raise Unconvertible(f"auto_pad={attrs['auto_pad']!r}")
    pads = list(attrs.get("pads", [0] * 2 * rank))
    if pads[:rank] != pads[rank:]:
        raise Unconvertible(f"asymmetric pads {pads}")
    return pads[:rank]


def _spatial(attrs: dict, name: str, rank: int, default: int) -> list[int]:
    return list(attrs.get(name, [default] * rank))


def _conv(attrs, x, w, b=None):
    rank = w.dim() - 2
    if rank != 2:
        raise Unconvertible(f"Conv of rank {rank}")
    return F.conv2d(x, w, b, _spatial(attrs, "strides", 2, 1), _pads(attrs, 2), _spatial(attrs, "dilations", 2, 1),
                    attrs.get("group", 1))


def _pool(attrs, x, kind: str):
    k = list(attrs["kernel_shape"])
    if len(k) != 2 or attrs.get("storage_order", 0):
        raise Unconvertible(f"{kind} with kernel {k}")
    stride, pads, ceil = _spatial(attrs, "strides", 2, 1), _pads(attrs, 2), bool(attrs.get("ceil_mode", 0))
    if kind == "MaxPool":
        return F.max_pool2d(x, k, stride, pads, _spatial(attrs, "dilations", 2, 1), ceil)
    if _spatial(attrs, "dilations", 2, 1) != [1, 1]:
        raise Unconvertible("dilated AveragePool")
    return F.avg_pool2d(x, k, stride, pads, ceil, bool(attrs.get("count_include_pad", 0)))


def _gemm(attrs, a, b, c=None):
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + attrs.get("beta", 1.0) * c


def _div(attrs, a, b):
    integer = not (a.is_floating_point() or b.is_floating_point())
    return torch.div(a, b, rounding_mode="trunc") if integer else a / b


def _axes(attrs, axes) -> list[int] | None:
    """Axes from the attribute (older opsets) or the input (newer ones); None when neither is given."""
    if "axes" in attrs:
        return list(attrs["axes"])
    return None if axes is None else [int(a) for a in axes.tolist()]


def _unsqueeze(attrs, x, axes=None):
    for a in sorted(d % (x.dim() + len(_axes(attrs, axes))) for d in _axes(attrs, axes)):
        x = x.unsqueeze(a)
    return x


def _squeeze(attrs, x, axes=None):
    dims = _axes(attrs, axes)
    return x.squeeze() if dims is None else x.squeeze(tuple(dims))


def _reduce(fn: Callable, attrs, x, axes=None):
    dims = _axes(attrs, axes)
    if dims is None:
        if attrs.get("noop_with_empty_axes", 0):
            return x
        dims = list(range(x.dim()))
    return fn(x, dim=tuple(dims), keepdim=bool(attrs.get("keepdims", 1)))


def _reshape(attrs, x, shape):
    dims = [int(d) for d in shape.tolist()]
    if not attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _gather(attrs, x, idx):
    axis = attrs.get("axis", 0) % x.dim()
    idx = idx.long() % x.shape[axis]
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


def _slice(attrs, x, starts, ends, axes=None, steps=None):
    index = [slice(None)] * x.dim()
    axes = range(len(starts)) if axes is None else axes.tolist()
    steps = [1] * len(starts) if steps is None else steps.tolist()
    for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes, steps):
        if st < 1:
            raise Unconvertible(f"Slice with step {st}")
        index[a] = slice(s, e, st)
    return x[tuple(index)]


def _pad(attrs, x, pads, value=None, axes=None):
    mode = attrs.get("mode", "constant")
    if mode != "constant" or axes is not None:
        raise Unconvertible(f"Pad mode {mode!r}")
    p, n = [int(v) for v in pads.tolist()], x.dim()
    torch_pads = [v for d in reversed(range(n)) for v in (p[d], p[d + n])]
    return F.pad(x, torch_pads, value=0.0 if value is None else float(value))


def _clip(attrs, x, lo=None, hi=None):
    lo = attrs.get("min", None if lo is None else lo.item())
    hi = attrs.get("max", None if hi is None else hi.item())
    return x.clamp(lo, hi)


def _layer_norm(attrs, x, scale, bias=None):
    axis = attrs.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale.expand(x.shape[axis:]),
                        None if bias is None else bias.expand(x.shape[axis:]), attrs.get("epsilon", 1e-5))


def _constant(attrs: dict) -> torch.Tensor:
    if "value" not in attrs:
        raise Unconvertible(f"Constant with {sorted(attrs)}")
    return attrs["value"]


def _cast(attrs, x):
    if attrs["to"] not in _DTYPES:
        raise Unconvertible(f"Cast to ONNX type {attrs['to']}")
    return x.to(_DTYPES[attrs["to"]])


OPS: dict[str, Op] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda a, x, y: x @ y,
    "Add": lambda a, x, y: x + y,
    "Sub": lambda a, x, y: x - y,
    "Mul": lambda a, x, y: x * y,
    "Div": _div,
    "Pow": lambda a, x, y: x ** y,
    "Sqrt": lambda a, x: x.sqrt(),
    "Exp": lambda a, x: x.exp(),
    "Neg": lambda a, x: -x,
    "Reciprocal": lambda a, x: 1 / x,
    "Relu": lambda a, x: F.relu(x),
    "LeakyRelu": lambda a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "Tanh": lambda a, x: torch.tanh(x),
    "Erf": lambda a, x: torch.erf(x),
    "Gelu": lambda a, x: F.gelu(x, approximate=a.get("approximate", "none")),
    "Softmax": lambda a, x: torch.softmax(x, a.get("axis", -1)),
    "Clip": _clip,
    "MaxPool": lambda a, x: _pool(a, x, "MaxPool"),
    "AveragePool": lambda a, x: _pool(a, x, "AveragePool"),
    "GlobalAveragePool": lambda a, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda a, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "BatchNormalization": lambda a, x, s, b, m, v: F.batch_norm(x, m, v, s, b, False, 0.0, a.get("epsilon", 1e-5)),
    "InstanceNormalization": lambda a, x, s, b: F.instance_norm(x, weight=s, bias=b, eps=a.get("epsilon", 1e-5)),
    "LayerNormalization": _layer_norm,
    "ReduceMean": lambda a, x, axes=None: _reduce(torch.mean, a, x, axes),
    "ReduceSum": lambda a, x, axes=None: _reduce(torch.sum, a, x, axes),
    "Flatten": lambda a, x: x.reshape(math.prod(x.shape[:a.get("axis", 1)]), -1),
    "Reshape": _reshape,
    "Transpose": lambda a, x: x.permute(*a.get("perm", list(reversed(range(x.dim()))))),
    "Concat": lambda a, *xs: torch.cat(xs, a["axis"]),
    "Shape": lambda a, x: torch.tensor(x.shape[a.get("start", 0):a.get("end", x.dim())], dtype=torch.int64),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Pad": _pad,
    "Cast": _cast,
    "Constant": lambda a: _constant(a),
    "Identity": lambda a, x: x,
    "Dropout": lambda a, x, *_: x,
}


class OnnxGraph(nn.Module):
    """The graph of an ``onnx.ModelProto`` with one input and one output, run by the torch functions in OPS.

    Raises ``Unconvertible`` for an operator outside OPS, a custom domain, or a node with more than one output.
    """

    def __init__(self, model):
        super().__init__()
        graph = model.graph
        self._names: dict[str, str] = {}
        for i, init in enumerate(graph.initializer):
            self.register_buffer(f"t{i}", _tensor(init))
            self._names[init.name] = f"t{i}"
        inputs = [i.name for i in graph.input if i.name not in self._names]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise Unconvertible(f"{len(inputs)} inputs and {len(graph.output)} outputs")
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        self.nodes: list[tuple[str, list[str], str, dict]] = []
        for node in graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
                raise Unconvertible(f"operator {node.domain + '.' if node.domain else ''}{node.op_type}")
            if len([o for o in node.output if o]) != 1:
                raise Unconvertible(f"{node.op_type} with {len(node.output)} outputs")
            attrs = {a.name: _attribute(a) for a in node.attribute}
            if node.op_type == "Softmax" and opset < SOFTMAX_LAST_AXIS_OPSET:
                attrs.setdefault("axis", 1)  # before opset 13 Softmax flattened from axis 1; on (N, K) logits the same
            self.nodes.append((node.op_type, list(node.input), node.output[0], attrs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # shapes computed inside the graph would be traced as constants of one batch size
            raise ModelError("an ONNX graph run by torch operators cannot be traced by TorchScript")
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for name, key in self._names.items():
            env[name] = getattr(self, key)
        for op, inputs, output, attrs in self.nodes:
            args = [env[i] if i else None for i in inputs]
            while args and args[-1] is None:
                args.pop()
            out = OPS[op](attrs, *args)
            env[output] = out.to(x.dtype) if op == "Constant" and out.is_floating_point() else out
        return env[self.output_name]


def _attribute(a):
    """An attribute's value: strings decoded, a tensor (Constant's ``value``) as a torch tensor."""
    from onnx import AttributeProto, helper

    value = helper.get_attribute_value(a)
    if a.type == AttributeProto.TENSOR:
        return _tensor(value)
    return value.decode() if isinstance(value, bytes) else value


def _tensor(proto) -> torch.Tensor:
    """An ONNX TensorProto as a torch tensor; ModelError for one that keeps its data in another file, which
    ``onnx.numpy_helper`` would read relative to the current directory (``models.onnx_data.embed`` it first)."""
    from onnx import TensorProto, numpy_helper

    if proto.data_location == TensorProto.EXTERNAL:
        raise ModelError(f"ONNX tensor {proto.name!r} keeps its data in another file; embed it first")
    return torch.from_numpy(numpy_helper.to_array(proto).copy())


def convert(model, input_shape: tuple[int, int, int], reference: Callable[[torch.Tensor], torch.Tensor]) -> OnnxGraph:
    """``OnnxGraph(model)``, checked on a seeded probe batch against ``reference`` (ONNX Runtime's forward).

    Raises ``Unconvertible`` if the graph cannot be built, fails on the probe, or differs from the reference by
    more than MATCH_ATOL relative to the logits' scale.
    """
    try:
        graph = OnnxGraph(model)
    except (Unconvertible, ModelError):
        raise
    except Exception as e:
        raise Unconvertible(f"reading the graph failed ({type(e).__name__})") from None
    probe = torch.rand(PROBE_BATCH, *input_shape, generator=torch.Generator().manual_seed(PROBE_SEED))
    try:
        with torch.no_grad():
            got = graph(probe)
    except Unconvertible:
        raise
    except Exception as e:
        raise Unconvertible(f"running the graph in torch failed ({type(e).__name__})") from None
    want = reference(probe)
    scale = max(1.0, float(want.abs().max()))
    if got.shape != want.shape or not float((got - want).abs().max()) <= MATCH_ATOL * scale:
        raise Unconvertible("the torch graph's outputs differ from ONNX Runtime's")
    return graph
