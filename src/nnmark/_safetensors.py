"""A safetensors file's header, read and checked before its body, so a hostile file is refused unread.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON (``{"__metadata__": {..},
name: {"dtype", "shape", "data_offsets": [begin, end]}, ..}``), then the tensor bytes. :func:`read_header`
reads only the first 8 + n bytes, after checking that n fits the file, and :func:`check_entries` checks
that every declared tensor fits the body, so nothing of a file's body is read before its header is sound.
"""

import json
import os
from typing import Any, BinaryIO

import torch

# safetensors dtype codes of the torch dtypes nnmark stores.
DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
ITEMSIZE: dict[str, int] = {code: dtype.itemsize for dtype, code in DTYPE_CODES.items()}
LENGTH_BYTES = 8
MAX_TENSOR_BYTES = 2**63  # what safetensors itself can address; a shape beyond it is refused before multiplying on


class HeaderError(Exception):
    """The framing or header of a safetensors file is broken; callers re-raise it as their own error type."""


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object hook that refuses duplicate keys."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return obj


def _reject_constant(name: str) -> None:
    """A JSON hook that refuses NaN and Infinity."""
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """Parse JSON, refusing duplicate keys and NaN/Infinity (ValueError or RecursionError otherwise)."""
    return json.loads(text, object_pairs_hook=_strict_pairs, parse_constant=_reject_constant)


def file_size(fh: BinaryIO) -> int:
    """The size in bytes of the open file ``fh``."""
    return os.fstat(fh.fileno()).st_size


def read_header(fh: BinaryIO, size: int, max_header: int) -> tuple[bytes, dict[str, Any]]:
    """Read the raw header of ``fh`` (a file of ``size`` bytes) and its parsed JSON object.

    Refuses a header length that is 0, above ``max_header``, or longer than the file holds, before reading it,
    and JSON with duplicate keys or NaN/Infinity.
    """
    if size < LENGTH_BYTES:
        raise HeaderError(f"{size} bytes is shorter than the {LENGTH_BYTES}-byte header length")
    n = int.from_bytes(fh.read(LENGTH_BYTES), "little")
    if not 0 < n <= min(max_header, size - LENGTH_BYTES):
        raise HeaderError(f"header length {n} does not fit a file of {size} bytes")
    raw = fh.read(n)
    if len(raw) != n:
        raise HeaderError(f"file ended inside its {n}-byte header")
    try:
        header = parse_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HeaderError(f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    return raw, header


def entry_bytes(entry: Any) -> int:
    """The byte size of a header entry ``{"dtype", "shape", "data_offsets"}``; HeaderError if it is malformed."""
    if not (
        isinstance(entry, dict)
        and entry.keys() == {"dtype", "shape", "data_offsets"}
        and entry["dtype"] in ITEMSIZE
        and isinstance(entry["shape"], list)
        and all(type(d) is int and d >= 0 for d in entry["shape"])
    ):
        raise HeaderError("bad header entry")
    if 0 in entry["shape"]:
        return 0
    nbytes = ITEMSIZE[entry["dtype"]]
    for d in entry["shape"]:  # stops at the bound: the product of a long list of huge dimensions would not finish
        nbytes *= d
        if nbytes > MAX_TENSOR_BYTES:
            raise HeaderError(f"its shape declares more than {MAX_TENSOR_BYTES} bytes")
    return nbytes


def check_entries(header: dict[str, Any], body_size: int) -> None:
    """Raise HeaderError unless every tensor entry of ``header`` is well-formed and lies within a body of
    ``body_size`` bytes, with ``end - begin`` equal to its shape times its item size, and the last ends the body
    (so a body with bytes after its tensors is refused before it is read)."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            nbytes = entry_bytes(entry)
        except HeaderError as e:
            raise HeaderError(f"tensor {name!r}: {e}") from None
        offsets = entry["data_offsets"]
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= body_size
            and offsets[1] - offsets[0] == nbytes
        ):
            raise HeaderError(f"tensor {name!r} declares {nbytes} bytes at {offsets!r}, "
                              f"outside a {body_size}-byte body")
        end = max(end, offsets[1])
    if end != body_size:
        raise HeaderError(f"its tensors end at byte {end} of a {body_size}-byte body")
