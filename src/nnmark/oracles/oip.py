"""Open Inference Protocol v2 REST messages, for the client (``HttpOracle``) and the server (``nnmark serve``).

Tensors travel as JSON (``"data"``: the flat row-major list, or lists nested as the shape says) or with
the binary tensor extension: the JSON header comes first and its length is in the HTTP header
``Inference-Header-Content-Length``; each binary tensor's parameters give its ``binary_data_size``, and its
little-endian bytes follow the header in tensor order. A request asks for binary answers per output
(``"parameters": {"binary_data": true}``) or for all of them (request parameter ``binary_data_output``).

Decoding is strict, since either side may be hostile: JSON NaN/Infinity, numbers that overflow float64
(``1e999``) or their datatype, integers longer than 20 digits, booleans or strings among numbers, a shape
and data that do not agree, binary sizes that do not fit the body, bytes left over, a length header that is
not plain ASCII digits: each raises ``MalformedMessage`` with one line (the server answers it with 400).
Nothing is allocated beyond the message's own size: every value takes at least one byte (in JSON, in binary
and in protobuf), so a shape whose product (a 0 counted as 1) exceeds the message's byte count is refused
before any array is made. Datatypes: BOOL, UINT8-64, INT8-64, FP16, FP32, FP64.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from nnmark.errors import EndpointError

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
DTYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
MAX_DIMS = 8
MAX_INT_DIGITS = 20
"""Longer JSON integers are refused before Python builds them (no INT64/UINT64 value needs more)."""
MAX_LENGTH_DIGITS = 18
"""Longer length headers are refused (any shorter one fits an int64)."""


class MalformedMessage(EndpointError):
    """An OIP v2 message that does not follow the protocol (the server's 400)."""


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype name of ``array``'s dtype."""
    for name, dtype in DTYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            return name
    raise MalformedMessage(f"no OIP datatype for numpy {array.dtype}")


def _refuse_constant(name: str):
    raise MalformedMessage(f"non-finite number {name} in JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise MalformedMessage(f"integer of {len(text)} digits is out of range")
    return int(text)


def loads(data: bytes) -> Any:
    """Strict JSON: no NaN/Infinity and no integer longer than ``MAX_INT_DIGITS`` digits (a float that overflows
    float64, e.g. 1e999, becomes inf here and is refused where tensor data are read)."""
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except MalformedMessage:
        raise
    except (ValueError, RecursionError) as e:
        raise MalformedMessage(f"malformed JSON: {str(e)[:120]}") from None


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def parse_length(text: str) -> int | None:
    """A length header as an int: ASCII digits only, at most ``MAX_LENGTH_DIGITS`` of them; None otherwise
    (``str.isdigit`` alone takes "²", which ``int`` does not)."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_LENGTH_DIGITS:
        return int(text)
    return None


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header (an object) and the binary part of a message."""
    size = len(body) if header_length is None else parse_length(header_length)
    if size is None or size > len(body):
        raise MalformedMessage(f"{HEADER_LENGTH} {header_length[:30]!r} does not fit a body of {len(body)} bytes")
    header = loads(body[:size])
    if not isinstance(header, dict):
        raise MalformedMessage("the message must be a JSON object")
    return header, body[size:]


def _flatten(data: Any, shape: list[int]) -> list:
    """The values of flat or shape-nested ``data``, row-major."""
    if not isinstance(data, list):
        raise MalformedMessage("data must be a list")
    if not any(isinstance(v, list) for v in data):
        return data
    out: list = []
    level = [data]
    for depth, size in enumerate(shape):
        last = depth == len(shape) - 1
        nxt: list = []
        for item in level:
            if not isinstance(item, list) or len(item) != size:
                raise MalformedMessage(f"nested data does not follow the shape {shape}")
            (out if last else nxt).extend(item)
        level = nxt
    if any(isinstance(v, list) for v in out):
        raise MalformedMessage(f"nested data is deeper than the shape {shape}")
    return out


def values_array(values: list, datatype: str) -> np.ndarray:
    """A flat array of ``datatype`` from Python values, each of the right kind, in range and finite."""
    dtype = DTYPES[datatype]
    types = set(map(type, values))
    allowed = {bool} if dtype.kind == "b" else {int} if dtype.kind in "iu" else {int, float}
    if not types <= allowed:
        what = "booleans" if dtype.kind == "b" else "integers" if dtype.kind in "iu" else "numbers"
        raise MalformedMessage(f"{datatype} data must hold only {what}")
    if dtype.kind in "iu" and values:
        info = np.iinfo(dtype)
        if min(values) < info.min or max(values) > info.max:
            raise MalformedMessage(f"{datatype} data holds values outside [{info.min}, {info.max}]")
    try:
        with np.errstate(over="ignore"):
            array = np.array(values, dtype=np.float64 if dtype.kind == "f" else dtype).astype(dtype)
    except OverflowError:
        raise MalformedMessage(f"{datatype} data holds a number too large for it") from None
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise MalformedMessage(f"{datatype} data holds values that are non-finite or overflow {datatype}")
    return array


def check_shape(shape: Any, where: str, most: int) -> list[int]:
    """``shape`` as a list of at most ``MAX_DIMS`` sizes >= 0 whose product, a 0 counted as 1, is at most
    ``most`` (the byte count of the message: no value takes less than a byte)."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(type(s) is int and s >= 0 for s in shape):
        raise MalformedMessage(f"{where}: shape must be a list of at most {MAX_DIMS} sizes >= 0, got {str(shape)[:60]}")
    if math.prod(max(s, 1) for s in shape) > most:
        raise MalformedMessage(f"{where}: shape {str(shape)[:60]} holds more values than its message of {most} "
                               f"bytes can")
    return shape


def bytes_array(raw: bytes, datatype: str, shape: list[int], where: str, offset: int = 0,
                size: int | None = None) -> np.ndarray:
    """The ``shape`` array of little-endian ``datatype`` values in ``raw[offset:offset + size]`` (size: the rest)."""
    dtype = DTYPES[datatype]
    need = math.prod(shape) * dtype.itemsize
    size = len(raw) - offset if size is None else size
    if type(size) is not int or size != need or offset + size > len(raw):
        raise MalformedMessage(f"{where}: {str(size)[:30]} bytes of binary data do not fit its shape {shape} "
                               f"({need} bytes) or the body")
    array = np.frombuffer(raw, dtype, math.prod(shape), offset).reshape(shape).copy()
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise MalformedMessage(f"{where} holds non-finite values")
    return array


def read_tensors(objs: Any, binary: bytes, where: str, most: int) -> dict[str, np.ndarray]:
    """``{name: array}`` of a message's ``inputs`` or ``outputs`` list, JSON or binary, every part checked;
    ``most`` is the message's byte count (see ``check_shape``)."""
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise MalformedMessage(f"'{where}' must be a list of tensor objects")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for obj in objs:
        name, datatype = obj.get("name"), obj.get("datatype")
        if not isinstance(name, str) or name in tensors:
            raise MalformedMessage(f"every tensor in '{where}' needs its own string 'name'")
        if datatype not in DTYPES:
            raise MalformedMessage(f"tensor {name[:40]!r}: datatype must be one of {', '.join(DTYPES)}")
        where = f"tensor {name[:40]!r}"
        params = obj.get("parameters") or {}
        if not isinstance(params, dict):
            raise MalformedMessage(f"{where}: parameters must be an object")
        size = params.get("binary_data_size")
        if size is None and "data" not in obj:
            raise MalformedMessage(f"{where} has neither 'data' nor binary_data_size")
        shape = check_shape(obj.get("shape"), where, most)
        if size is not None:
            array = bytes_array(binary, datatype, shape, where, offset, size)
            offset += size
        else:
            values = _flatten(obj["data"], shape)
            count = math.prod(shape)
            if len(values) != count:
                raise MalformedMessage(f"{where} has {len(values)} values, its shape {shape} needs {count}")
            array = values_array(values, datatype).reshape(shape)
        tensors[name] = array
    if offset != len(binary):
        raise MalformedMessage(f"{len(binary) - offset} bytes of binary data belong to no tensor")
    return tensors


def write_tensors(tensors: Mapping[str, np.ndarray], binary: set[str]) -> tuple[list[dict], bytes]:
    """Tensor objects and the concatenated little-endian bytes of those named in ``binary``."""
    objs, chunks = [], []
    for name, array in tensors.items():
        datatype = datatype_of(array)
        obj: dict = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if name in binary:
            chunk = np.ascontiguousarray(array, DTYPES[datatype]).tobytes()
            obj["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            obj["data"] = array.reshape(-1).tolist()
        objs.append(obj)
    return objs, b"".join(chunks)


def pack(header: dict, binary: bytes) -> tuple[bytes, dict[str, str]]:
    """A message body and its content headers: JSON alone, or JSON then bytes with ``HEADER_LENGTH``."""
    text = dumps(header)
    if not binary:
        return text, {"Content-Type": JSON_TYPE}
    return text + binary, {"Content-Type": BINARY_TYPE, HEADER_LENGTH: str(len(text))}


@dataclass
class InferRequest:
    """A decoded infer request: its id, input arrays, the outputs it asks for (None: all) and which of
    those it wants as binary data."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    binary_outputs: set[str] = field(default_factory=set)
    binary_all: bool = False

    def wants_binary(self, name: str) -> bool:
        return self.binary_all or name in self.binary_outputs


def _flag(params: Any, key: str, where: str) -> bool:
    value = (params or {}).get(key, False) if isinstance(params or {}, dict) else None
    if type(value) is not bool:
        raise MalformedMessage(f"{where}: parameters must be an object and {key} a boolean")
    return value


def _request_id(header: dict) -> str | None:
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise MalformedMessage("'id' must be a string")
    return rid


def encode_request(inputs: Mapping[str, np.ndarray], outputs: Sequence[str], *, request_id: str,
                   binary: bool = False) -> tuple[bytes, dict[str, str]]:
    """An infer request body and headers; ``binary`` sends the inputs as binary and asks for binary answers."""
    objs, data = write_tensors(inputs, set(inputs) if binary else set())
    header: dict = {"id": request_id, "inputs": objs,
                    "outputs": [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]}
    if binary:
        header["parameters"] = {"binary_data_output": True}
    return pack(header, data)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Check and decode an infer request body."""
    header, binary = split_body(body, header_length)
    rid = _request_id(header)
    binary_all = _flag(header.get("parameters"), "binary_data_output", "request")
    inputs = read_tensors(header.get("inputs"), binary, "inputs", len(body))
    wanted = header.get("outputs")
    if wanted is None:
        return InferRequest(rid, inputs, None, set(), binary_all)
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise MalformedMessage("'outputs' must be a list of objects with a string 'name'")
    names = [o["name"] for o in wanted]
    binary_outputs = {o["name"] for o in wanted
                      if _flag(o.get("parameters"), "binary_data", f"output {o['name'][:40]!r}")}
    return InferRequest(rid, inputs, names, binary_outputs, binary_all)


def encode_response(model_name: str, outputs: Mapping[str, np.ndarray], *, request_id: str | None,
                    binary: set[str], model_version: str | None = None) -> tuple[bytes, dict[str, str]]:
    """An infer response body and headers; the outputs named in ``binary`` go as binary data."""
    objs, data = write_tensors(outputs, binary)
    header: dict = {"model_name": model_name, "outputs": objs}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    return pack(header, data)


def decode_response(body: bytes, header_length: str | None) -> tuple[Any, dict[str, np.ndarray]]:
    """The id (any JSON value, as servers echo it) and the output arrays of an infer response."""
    header, binary = split_body(body, header_length)
    return header.get("id"), read_tensors(header.get("outputs"), binary, "outputs", len(body))
