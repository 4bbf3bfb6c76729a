"""How a served model is shaped: ``EndpointSpec``, its check against the server's metadata, and the
one place where pixel-space queries become wire tensors and wire answers become probabilities.

An ``EndpointSpec`` says what the client knows (or was told on the command line); fields left None are
read from the server's model metadata by :func:`resolve`, which refuses, in one line, a spec that
contradicts the metadata (e.g. "metadata says NHWC, --layout says NCHW"). The result, an ``Endpoint``,
is what the HTTP and gRPC oracles use.

Queries are always pixel-space float (N, C, H, W) in [0, 1]. :func:`to_wire` normalises them
(``(x - mean) / std`` per channel, in float64), transposes them to NHWC when asked, and casts them to
the wire datatype: FP32 (exact for float32 queries without normalisation), FP16, or UINT8
(``round(255 x)``, pixels 0-255; normalisation is then the server's job). :func:`read_answer` turns the
answer back: probabilities are checked (finite, in [0, 1], rows summing to 1 within 1e-3) and cast to
float32; logits get a float64 softmax, cast to float32, and labels that are the argmax of the float64
logits. Every method then decides on those probabilities, one decision path for both output kinds (the
pairs head reads ``log p``, equal to the log-softmax of the logits up to the float32 rounding of ``p``).
A label-only endpoint (output kind "labels", an integer tensor of shape [N] or [N, 1]) gives an oracle
with label access only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch

from nnmark.errors import ArgumentError, EndpointError, InputError

TRANSPORTS = ("rest", "rest-binary", "grpc")
LAYOUTS = ("NCHW", "NHWC")
INPUT_DTYPES = ("FP32", "FP16", "UINT8")
OUTPUT_KINDS = ("probabilities", "logits", "labels")
FLOAT_OUTPUTS = ("FP16", "FP32", "FP64")
LABEL_OUTPUTS = ("INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32", "UINT64")

DEFAULT_MODEL_NAME = "model"
DEFAULT_LAYOUT = "NCHW"
DEFAULT_INPUT_DTYPE = "FP32"
DEFAULT_OUTPUT_NAMES = {"probabilities": "probabilities", "logits": "logits", "labels": "label"}
"""The output a kind is read from when the spec names none (``nnmark serve``'s names)."""
DEFAULT_LABEL_NAME = "label"
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_ANSWER_BYTES = 64 * 2**20
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.2
DEFAULT_CONSISTENCY_SAMPLES = 2
DEFAULT_CONSISTENCY_ATOL = 1e-5
ROW_SUM_TOLERANCE = 1e-3
UINT8_TOLERANCE = 1e-3
"""How far (in 0-255 levels) a query may sit from a pixel level and still be sent to a UINT8 endpoint."""
MAX_BATCH_SIZE = 2**31 - 1
"""The largest ``max_batch_size`` metadata may state (Triton's model configuration keeps it in an int32)."""

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
"""Per-channel (mean, std); one value each applies to every channel."""
NO_NORMALIZATION: Normalization = ((0.0,), (1.0,))
IMAGENET: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CHANNEL_SIZES = (1, 3)


def parse_normalize(text: str) -> Normalization:
    """``"none"``, ``"imagenet"``, ``"M,S"`` or ``"M1,M2,M3,S1,S2,S3"`` as (mean, std); ``ArgumentError`` otherwise."""
    word = text.strip().lower()
    if word == "none":
        return NO_NORMALIZATION
    if word == "imagenet":
        return IMAGENET
    try:
        values = [float(v) for v in word.split(",")]
    except ValueError:
        values = []
    half = len(values) // 2
    if len(values) not in (2, 6) or not all(math.isfinite(v) for v in values) or min(values[half:]) <= 0:
        raise ArgumentError(f"normalize must be none, imagenet, 'M,S' or 'M1,M2,M3,S1,S2,S3' with std > 0, "
                            f"got {text!r}")
    return tuple(values[:half]), tuple(values[half:])


def format_normalize(norm: Normalization) -> str:
    """The inverse of :func:`parse_normalize` ("none" for the identity)."""
    if norm == NO_NORMALIZATION:
        return "none"
    return ",".join(f"{v:g}" for v in (*norm[0], *norm[1]))


def redact_url(url: str) -> str:
    """``url`` without its userinfo (``http://user:pw@h`` -> ``http://***@h``), safe to print."""
    parts = urlsplit(str(url))
    if "@" not in parts.netloc:
        return str(url)
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True)
class EndpointSpec:
    """What the client knows about an OIP v2 endpoint; None fields are read from the server's metadata.

    Attributes:
        url: the server's base URL: ``http(s)://host:port[/prefix]`` or ``grpc://host:port`` (never a
            route such as ``.../v2/models/m``; userinfo is allowed and never printed, see ``redact_url``).
        transport: "rest" (JSON), "rest-binary" (the binary tensor extension both ways) or "grpc";
            None: "grpc" for grpc:// URLs, else "rest".
        model_name: the OIP model name (default "model").
        model_version: the model version (``/v2/models/{name}/versions/{v}``); None: the server's choice.
        input_name: the input tensor; None: the metadata's only input.
        layout: "NCHW" or "NHWC"; None: the metadata's model card, or the one its input shape shows, else NCHW.
        input_dtype: "FP32", "FP16" or "UINT8" (0-255 pixels); None: the metadata's.
        normalize: client-side (mean, std) per channel (``parse_normalize``); None: the metadata's model
            card, else none.
        output_name: the answer tensor; None: the default name of ``output_kind`` ("probabilities",
            "logits", "label"), else the one "probabilities" or "logits" output.
        output_kind: "probabilities", "logits" (softmax client-side in float64) or "labels" (label-only
            oracle); None: told by the output's name.
        label_name: an integer [N] or [N, 1] output holding the server's own top-1 decision; None: "label"
            when the metadata lists it.
        batch_size: the most inputs per request (also bounded by the metadata's max_batch_size).
        timeout: seconds one request may take in all, connecting to last byte (an overall deadline).
        max_answer_bytes: the largest answer read; a longer one is cut off and refused.
        retries: retries after a transient failure (connection error, timeout, 429, 502, 503, 504).
        backoff: the first retry waits ``backoff`` s, then twice as long each time.
        consistency_check: re-ask a few inputs of every call and refuse an endpoint whose answers move.
        consistency_samples: how many inputs each call re-asks.
        consistency_atol: the largest allowed change of a re-asked probability.
    """

    url: str
    transport: str | None = None
    model_name: str = DEFAULT_MODEL_NAME
    model_version: str | None = None
    input_name: str | None = None
    layout: str | None = None
    input_dtype: str | None = None
    normalize: Normalization | None = None
    output_name: str | None = None
    output_kind: str | None = None
    label_name: str | None = None
    batch_size: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    consistency_check: bool = True
    consistency_samples: int = DEFAULT_CONSISTENCY_SAMPLES
    consistency_atol: float = DEFAULT_CONSISTENCY_ATOL

    def __post_init__(self) -> None:
        url = str(self.url).strip().rstrip("/")
        parts = urlsplit(url)
        shown = redact_url(url)
        if parts.scheme not in ("http", "https", "grpc") or not parts.hostname:
            raise EndpointError(f"endpoint URL must be http(s)://host[:port] or grpc://host:port, got {shown!r}")
        segments = parts.path.split("/")
        if "v2" in segments:
            base = urlunsplit(parts._replace(path="/".join(segments[:segments.index("v2")]), query="", fragment=""))
            raise EndpointError(f"{shown} is a route, not the server's base URL: use {redact_url(base)!r} "
                                f"(and the model name, version as their own options)")
        transport = self.transport or ("grpc" if parts.scheme == "grpc" else "rest")
        if transport not in TRANSPORTS:
            raise ArgumentError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        if (transport == "grpc") != (parts.scheme == "grpc"):
            raise EndpointError(f"transport {transport!r} does not fit the URL {shown!r} (gRPC takes grpc://host:port)")
        if parts.scheme == "grpc" and (parts.path or parts.username or parts.password):
            raise EndpointError(f"a gRPC endpoint is grpc://host:port, got {shown!r}")
        _check_choice("layout", self.layout, LAYOUTS)
        _check_choice("input_dtype", self.input_dtype, INPUT_DTYPES)
        _check_choice("output_kind", self.output_kind, OUTPUT_KINDS)
        if not self.model_name or "/" in self.model_name or (self.model_version is not None and
                                                             (not self.model_version or "/" in self.model_version)):
            raise ArgumentError("model name and version must be non-empty and without '/'")
        if self.normalize is not None:
            mean, std = self.normalize
            if len(mean) != len(std) or len(mean) not in _CHANNEL_SIZES or min(std) <= 0:
                raise ArgumentError("normalize needs as many means as stds (1 or 3), every std > 0")
            if self.input_dtype == "UINT8" and self.normalize != NO_NORMALIZATION:
                raise ArgumentError("UINT8 inputs are 0-255 pixels; normalisation is then the server's, "
                                    "not --normalize")
        if self.batch_size is not None and (type(self.batch_size) is not int or self.batch_size < 1):
            raise ArgumentError("batch_size must be an integer >= 1 or None")
        if not (0 < self.timeout < math.inf and 0 <= self.backoff < math.inf) or self.retries < 0 \
                or type(self.max_answer_bytes) is not int or self.max_answer_bytes < 1:
            raise ArgumentError("timeout must be finite and > 0, backoff finite and >= 0, max_answer_bytes an "
                                "integer >= 1 and retries >= 0")
        if self.consistency_samples < 1 or not self.consistency_atol >= 0:
            raise ArgumentError("consistency_samples must be >= 1 and consistency_atol >= 0")
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "transport", transport)

    @property
    def shown_url(self) -> str:
        """The URL without userinfo."""
        return redact_url(self.url)


SPEC_FIELDS = tuple(f.name for f in fields(EndpointSpec))


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class Endpoint:
    """A spec with every field filled from the metadata, and what the metadata says of the model.

    Attributes:
        spec: the spec; ``layout``, ``input_dtype``, ``normalize``, ``input_name``, ``output_name`` and
            ``output_kind`` are set (``label_name`` may stay None).
        input_shape: (C, H, W) of one pixel-space query.
        num_classes: K.
        max_batch: the most inputs per request the metadata allows (see ``_server_batch``), or None.
    """

    spec: EndpointSpec
    input_shape: tuple[int, int, int]
    num_classes: int
    max_batch: int | None = None

    @property
    def batch_limit(self) -> int | None:
        """The most inputs one request carries (the smaller of the spec's and the server's), or None."""
        limits = [b for b in (self.spec.batch_size, self.max_batch) if b is not None]
        return min(limits) if limits else None

    @property
    def access(self) -> str:
        return "labels" if self.spec.output_kind == "labels" else "probabilities"

    @property
    def outputs(self) -> list[str]:
        """The outputs to ask for."""
        return [self.spec.output_name] + ([self.spec.label_name] if self.spec.label_name else [])


def _shape(value: Any) -> list[int] | None:
    return list(value) if isinstance(value, (list, tuple)) and all(type(s) is int for s in value) else None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _agree(name: str, said: Any, given: Any, show=str) -> Any:
    """``given`` if the metadata said nothing or the same, else a one-line refusal."""
    if said is not None and given is not None and said != given:
        raise EndpointError(f"metadata says {show(said)}, {_flag(name)} says {show(given)}")
    return given if given is not None else said


def _card(meta: Mapping) -> dict:
    """The model card ``nnmark serve`` publishes in the metadata ``parameters`` (empty for other servers)."""
    params = meta.get("parameters")
    return dict(params) if isinstance(params, Mapping) else {}


def _layout_of(dims: list[int], card: dict, input_shape: tuple[int, int, int] | None) -> str | None:
    """The layout the metadata shows: its card's, else the one that fits the key's (C, H, W), else a
    channel-sized (1 or 3) dimension first or last, else None."""
    if card.get("layout") in LAYOUTS:
        return card["layout"]
    if input_shape is not None:
        c, h, w = input_shape
        fits = [lay for lay, d in (("NCHW", [c, h, w]), ("NHWC", [h, w, c]))
                if all(a in (-1, b) for a, b in zip(dims, d))]
        if len(fits) == 1:
            return fits[0]
    first, last = dims[0] in _CHANNEL_SIZES, dims[2] in _CHANNEL_SIZES
    return "NCHW" if first and not last else "NHWC" if last and not first else None


def _pick_output(spec: EndpointSpec, named: dict[str, dict]) -> tuple[str, str]:
    """(output name, output kind) from the spec, filled from the metadata's outputs."""
    listed = ", ".join(map(repr, named)) or "none"
    name, kind = spec.output_name, spec.output_kind
    if name is None:
        candidates = [DEFAULT_OUTPUT_NAMES[k] for k in ((kind,) if kind else ("probabilities", "logits"))]
        found = [c for c in candidates if c in named]
        if not found:
            raise EndpointError(f"metadata lists outputs {listed}; none is named {' or '.join(map(repr, candidates))}: "
                                f"pass --output-name{'' if kind else ' and --output-kind'}")
        name = found[0]
    elif name not in named:
        raise EndpointError(f"metadata has no output {name!r}; it lists {listed}")
    if kind is None:
        by_name = {v: k for k, v in DEFAULT_OUTPUT_NAMES.items()}
        kind = by_name.get(name, "labels" if named[name].get("datatype") in LABEL_OUTPUTS else None)
        if kind is None:
            raise EndpointError(f"cannot tell whether output {name!r} holds probabilities or logits: "
                                "pass --output-kind")
    return name, kind


def _check_label_output(name: str, meta: dict) -> None:
    shape = _shape(meta.get("shape"))
    if meta.get("datatype") not in LABEL_OUTPUTS or shape is None or shape[1:] not in ([], [1]):
        raise EndpointError(f"label output {name!r} must be an integer tensor [N] or [N, 1]; metadata says {meta}")


def _server_batch(card: dict, input_name: str, first: int) -> int | None:
    """The most inputs per request the metadata's ``max_batch_size`` parameter allows (None: no limit).

    0 means, as in Triton's model configuration, that the server adds no batch dimension: the input's first
    dimension is then the model's own, so -1 takes any number of inputs, 1 one at a time, and a model that
    takes exactly d > 1 is refused (a call's inputs come in any number)."""
    said = card.get("max_batch_size")
    if said is None:
        return None
    if type(said) is not int or not 0 <= said <= MAX_BATCH_SIZE:
        raise EndpointError(f"metadata parameter max_batch_size must be an integer in [0, {MAX_BATCH_SIZE}], "
                            f"got {repr(said)[:30]}")
    if said:
        return said
    if first not in (-1, 1):
        raise EndpointError(f"max_batch_size 0 with input {input_name!r} of shape [{first}, ...]: the model takes "
                            f"exactly {first} inputs per request, but nnmark's calls have any size (publish its "
                            f"first dimension as -1 or 1)")
    return None if first == -1 else 1


def resolve(spec: EndpointSpec, metadata: Mapping, *, input_shape: tuple[int, int, int] | None = None,
            num_classes: int | None = None) -> Endpoint:
    """Fill ``spec`` from the model ``metadata`` (OIP v2 JSON form) and check that both agree.

    Args:
        spec: what the client was told.
        metadata: ``GET /v2/models/{name}`` (or the gRPC ModelMetadata as the same dict).
        input_shape: the (C, H, W) the key's queries have, to fill dimensions the metadata leaves open (-1)
            and to check the rest; None: the metadata's.
        num_classes: K the key expects, likewise.

    Raises ``EndpointError`` with one line on the first contradiction or gap.
    """
    if not isinstance(metadata.get("inputs"), list) or not isinstance(metadata.get("outputs"), list):
        raise EndpointError("its metadata has no 'inputs' and 'outputs' lists")
    card = _card(metadata)
    inputs = {t.get("name"): t for t in metadata["inputs"] if isinstance(t, dict)}
    if spec.input_name is not None:
        if spec.input_name not in inputs:
            raise EndpointError(f"metadata has no input {spec.input_name!r}; it lists {', '.join(map(repr, inputs))}")
        input_name = spec.input_name
    elif len(inputs) == 1:
        (input_name,) = inputs
    else:
        raise EndpointError(f"metadata lists inputs {', '.join(map(repr, inputs)) or 'none'}: pass --input-name")
    meta_in = inputs[input_name]
    said_dtype = meta_in.get("datatype")
    if said_dtype is not None and said_dtype not in INPUT_DTYPES:
        raise EndpointError(f"input {input_name!r} takes {said_dtype}; nnmark sends {', '.join(INPUT_DTYPES)}")
    input_dtype = _agree("input_dtype", said_dtype, spec.input_dtype) or DEFAULT_INPUT_DTYPE
    dims = _shape(meta_in.get("shape"))
    if dims is None or len(dims) != 4:
        raise EndpointError(f"input {input_name!r} must be a 4-d image batch; metadata says shape "
                            f"{meta_in.get('shape')}")
    max_batch = _server_batch(card, input_name, dims[0])
    dims = dims[1:]
    layout = _agree("layout", _layout_of(dims, card, input_shape), spec.layout) or DEFAULT_LAYOUT
    chw = dims if layout == "NCHW" else [dims[2], dims[0], dims[1]]
    if input_shape is not None:
        if any(a not in (-1, b) for a, b in zip(chw, input_shape)):
            raise EndpointError(f"endpoint takes {layout} inputs of (C, H, W) {tuple(chw)}, the key's queries are "
                                f"{tuple(input_shape)}")
        chw = list(input_shape)
    if min(chw) < 1:
        raise EndpointError(f"metadata leaves the input size open ({tuple(chw)}) and no key tells it")
    norm = spec.normalize
    if "normalize" in card:
        norm = _agree("normalize", parse_normalize(str(card["normalize"])), norm, format_normalize)
    norm = norm or NO_NORMALIZATION
    if len(norm[0]) not in (1, chw[0]):
        raise EndpointError(f"normalize has {len(norm[0])} channel values, the inputs have {chw[0]} channels")
    if input_dtype == "UINT8" and norm != NO_NORMALIZATION:
        raise EndpointError("the endpoint takes UINT8 pixels, which nnmark cannot normalise: normalisation is "
                            "the server's")
    named = {t.get("name"): t for t in metadata["outputs"] if isinstance(t, dict)}
    output_name, output_kind = _pick_output(spec, named)
    meta_out = named[output_name]
    classes = num_classes
    if output_kind == "labels":
        _check_label_output(output_name, meta_out)
        classes = classes if classes is not None else card.get("num_classes")
    else:
        out_shape = _shape(meta_out.get("shape"))
        if meta_out.get("datatype") not in FLOAT_OUTPUTS or out_shape is None or len(out_shape) != 2:
            raise EndpointError(f"output {output_name!r} must be a float tensor [N, K] of {output_kind}; "
                                f"metadata says {meta_out}")
        if out_shape[1] >= 1:
            classes = _agree("num_classes", out_shape[1], num_classes)
    if type(classes) is not int or classes < 2:
        raise EndpointError(f"metadata does not tell the number of classes of output {output_name!r} "
                            "and no key tells it")
    label_name = spec.label_name
    if label_name is not None:
        if label_name not in named:
            raise EndpointError(f"metadata has no output {label_name!r}; it lists {', '.join(map(repr, named))}")
        _check_label_output(label_name, named[label_name])
    elif output_kind != "labels" and named.get(DEFAULT_LABEL_NAME, {}).get("datatype") in LABEL_OUTPUTS:
        label_name = DEFAULT_LABEL_NAME
    filled = replace(spec, input_name=input_name, input_dtype=input_dtype, layout=layout, normalize=norm,
                     output_name=output_name, output_kind=output_kind, label_name=label_name)
    return Endpoint(filled, (chw[0], chw[1], chw[2]), classes, max_batch)


_NUMPY = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}


def to_wire(x: torch.Tensor, endpoint: Endpoint) -> np.ndarray:
    """Pixel-space (N, C, H, W) queries in [0, 1] as the endpoint's input tensor (layout, dtype, normalisation)."""
    spec = endpoint.spec
    x = x.detach().cpu()
    if spec.input_dtype == "UINT8":
        x = x.double() * 255
        if (x - x.round()).abs().max() > UINT8_TOLERANCE:
            raise InputError("the endpoint takes UINT8 pixels but these queries are not 8-bit images (fragile "
                             "samples sit between pixel levels): rounding them would ask another question, so they "
                             "are not sent; serve the model with FP32 inputs to check this key")
        x = x.round().clamp(0, 255)
    elif spec.normalize != NO_NORMALIZATION:
        mean, std = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in spec.normalize)
        x = (x.double() - mean) / std
    if spec.layout == "NHWC":
        x = x.permute(0, 2, 3, 1)
    # float64 -> float32 first, as torch rounds it, so FP32 is exact for float32 queries and FP16 rounds once more
    return np.ascontiguousarray(x.to(torch.float64).numpy().astype(np.float32).astype(_NUMPY[spec.input_dtype]))


def _labels(name: str, array: np.ndarray | None, n: int, k: int) -> torch.Tensor:
    if array is None or array.shape not in ((n,), (n, 1)) or array.dtype.kind not in "iu":
        raise EndpointError(f"endpoint returned malformed labels: expected {n} integer class indices "
                            f"in output {name!r}")
    labels = array.reshape(n).astype(np.int64)
    if labels.min() < 0 or labels.max() >= k:
        raise EndpointError(f"endpoint returned malformed labels: class indices outside [0, {k})")
    return torch.from_numpy(labels)


def read_answer(outputs: Mapping[str, np.ndarray], n: int,
                endpoint: Endpoint) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The float32 probabilities (n, K) (None for a label-only endpoint) and int64 labels (n,) of an answer."""
    spec, k = endpoint.spec, endpoint.num_classes
    name, kind = spec.output_name, spec.output_kind
    if kind == "labels":
        return None, _labels(name, outputs.get(name), n, k)
    bad = f"endpoint returned malformed {kind}"
    out = outputs.get(name)
    if out is None:
        raise EndpointError(f"{bad}: no output named {name!r}")
    if out.dtype.kind != "f" or out.shape != (n, k):
        raise EndpointError(f"{bad}: expected a float tensor of shape {[n, k]}, got {out.dtype} "
                            f"of shape {list(out.shape)}")
    z = torch.from_numpy(out.astype(np.float64))
    if not torch.isfinite(z).all():
        raise EndpointError(f"{bad}: values are non-finite")
    if kind == "logits":
        p, labels = torch.softmax(z, dim=1).float(), z.argmax(dim=1)
    else:
        if z.min() < 0 or z.max() > 1:
            raise EndpointError(f"{bad}: values outside [0, 1] (logits? then pass --output-kind logits)")
        worst = (z.sum(dim=1) - 1).abs().max().item()
        if worst > ROW_SUM_TOLERANCE:
            raise EndpointError(f"{bad}: a row's sum is {worst:.3g} away from 1 (tolerance {ROW_SUM_TOLERANCE:g})")
        p = z.float()
        labels = p.argmax(dim=1)
    if spec.label_name:
        labels = _labels(spec.label_name, outputs.get(spec.label_name), n, k)
    return p, labels
