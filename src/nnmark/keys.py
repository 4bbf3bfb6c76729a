"""Key files: query samples, their expected labels and the method config, in one signed safetensors file.

A key file is a safetensors file with the tensors ``queries``, ``expected`` and ``extra.<name>`` and two
metadata entries: ``nnmark.key`` (canonical JSON of the method, config and provenance) and
``nnmark.signature`` (``hmac-sha256:<hex>`` or ``unsigned``). The file is written in one canonical byte
layout, and :func:`load` rejects any other layout, so every byte of a signed file is covered by its check.
:func:`load` reads the header first and refuses a file whose header does not fit it, or that declares more
than MAX_QUERIES queries, before reading its body. Nothing is ever unpickled.
"""

import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from safetensors.torch import load as safetensors_load
import torch

from nnmark import __version__, _safetensors
from nnmark._io import atomic_write_bytes
from nnmark.errors import ArgumentError, KeyFileError, SignatureError

FORMAT_VERSION = 1  # a key file of every released format is kept under tests/data/keys/ and must still verify
MAX_QUERIES = 100_000
"""The most queries a key may hold; checked from a file's header before its body is read."""
SHORTFALL = "shortfall"
"""Config entry of a key that holds fewer queries than asked: {"asked", "kept", "why"}, for the CLI to report."""

ENVIRONMENT = "environment"
"""Config entry of the environment a key was made in (``nnmark.envs.record``: device, dtype, backend flags); keys
made before it was recorded have none."""

SECRET_ENV = "NNMARK_SECRET"
KEY_META = "nnmark.key"
"""The safetensors metadata entry holding a key's JSON (method, config, digest, ...)."""
SIGNATURE_META = "nnmark.signature"
"""The metadata entry holding its signature."""
_UNSIGNED = "unsigned"
_HMAC_PREFIX = "hmac-sha256:"
_MAC_TAG = b"nnmark.key/v1"
_KEY_FIELDS = frozenset({"format", "method", "config", "model_digest", "created", "version"})
_MAX_HEADER = 100_000_000
_LENGTH = _safetensors.LENGTH_BYTES
_EXTRA_PREFIX = "extra."
_RESERVED = frozenset({"queries", "expected"})
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_METHOD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_SIG_RE = re.compile(re.escape(_HMAC_PREFIX) + r"[0-9a-f]{64}")
_DTYPES = _safetensors.DTYPE_CODES
_ITEMSIZE = _safetensors.ITEMSIZE


def now_utc() -> str:
    """The current UTC time as ISO-8601, to the second (e.g. ``2024-05-01T12:00:00Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class KeyFile:
    """The contents of a key file; construction validates every field and raises KeyFileError."""

    method: str
    config: dict
    queries: torch.Tensor
    expected: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    model_digest: str = ""
    created: str = ""
    version: str = __version__

    def __post_init__(self) -> None:
        """Fill ``created`` with the current time if empty, then validate."""
        if not self.created:
            self.created = now_utc()
        _validate(self)


def save(key: KeyFile, path: str | os.PathLike, *, secret: bytes | None) -> None:
    """Validate ``key`` and write it atomically to ``path``, signed under ``secret`` (None: marked unsigned)."""
    _check_secret(secret)
    _validate(key)
    key_json = _canonical_json(
        {
            "format": FORMAT_VERSION,
            "method": key.method,
            "config": key.config,
            "model_digest": key.model_digest,
            "created": key.created,
            "version": key.version,
        }
    )
    tensors = {"queries": key.queries, "expected": key.expected}
    tensors.update({_EXTRA_PREFIX + name: t for name, t in key.extras.items()})
    records = [_tensor_record(name, t) for name, t in tensors.items()]
    signature = _UNSIGNED if secret is None else _HMAC_PREFIX + _mac(secret, key_json, records)
    data = _encode({KEY_META: key_json, SIGNATURE_META: signature}, records)
    try:
        atomic_write_bytes(path, data, private=True)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot write key file: {e.strerror or e}") from e


def load(path: str | os.PathLike, *, secret: bytes | None, allow_unsigned: bool = False) -> KeyFile:
    """Read, check and return the key file at ``path``; raises KeyFileError (SignatureError for signatures)."""
    return load_digested(path, secret=secret, allow_unsigned=allow_unsigned)[0]


def load_digested(path: str | os.PathLike, *, secret: bytes | None,
                  allow_unsigned: bool = False) -> tuple[KeyFile, str]:
    """``load``, and the SHA-256 (hex) of the very bytes the key was read from (the file is read once, so a log
    that records the digest names what was checked, even if the file changes meanwhile)."""
    _check_secret(secret)
    try:
        with open(path, "rb") as fh:
            data, metadata, records = _decode(fh, _safetensors.file_size(fh))
            return _parse(data, metadata, records, secret, allow_unsigned), hashlib.sha256(data).hexdigest()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror or e}") from None
    except KeyFileError as e:
        raise type(e)(f"{path}: {e}") from None


def note_shortfall(config: dict, asked: int, kept: int, why: str) -> dict:
    """``config`` with a SHORTFALL entry when ``kept < asked``; ``why`` gives the reasons and the setting to change."""
    if kept < asked:
        config[SHORTFALL] = {"asked": int(asked), "kept": int(kept), "why": why}
    return config


def check_query_count(n: int, name: str, *, queries_each: int = 1) -> None:
    """ArgumentError unless ``n`` (the argument ``name``, e.g. "n_pairs") is an int in [1, MAX_QUERIES / queries_each].

    Methods call it before they allocate their ``n * queries_each`` queries, so a huge ``n`` is refused at once.
    """
    most = MAX_QUERIES // queries_each
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= most:
        raise ArgumentError(f"{name} must be an integer in [1, {most}] (a key holds at most {MAX_QUERIES} queries), "
                            f"got {n!r}")


def read_secret(
    secret_file: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """The signing secret: ``secret_file``'s bytes (one trailing newline stripped), else $NNMARK_SECRET, else None.

    The one way nnmark reads a secret: the CLI's ``--secret-file`` and ``NNMARK_SECRET`` go through it, so a
    key saved from Python with ``read_secret(path)`` verifies from the CLI with ``--secret-file path``. An
    empty secret (an empty file, a file holding only a newline, an empty variable) is a SignatureError.
    """
    if secret_file is not None:
        try:
            data = Path(secret_file).read_bytes()
        except FileNotFoundError:
            raise SignatureError(f"{secret_file}: no such secret file") from None
        except OSError as e:
            raise SignatureError(f"{secret_file}: cannot read secret file: {e.strerror or e}") from None
        data = data.removesuffix(b"\r\n") if data.endswith(b"\r\n") else data.removesuffix(b"\n")
        if not data:
            raise SignatureError(f"{secret_file}: secret file is empty")
        return data
    value = (os.environ if environ is None else environ).get(SECRET_ENV)
    if value is None:
        return None
    if not value:
        raise SignatureError(f"{SECRET_ENV} is set but empty")
    return value.encode("utf-8", "surrogateescape")


# --- validation -------------------------------------------------------------------------------------


def _validate(key: KeyFile) -> None:
    """Raise KeyFileError unless every field of ``key`` is well-formed."""
    if not (isinstance(key.method, str) and _METHOD_RE.fullmatch(key.method)):
        raise KeyFileError(f"method must be a non-empty identifier, got {key.method!r}")
    if not isinstance(key.config, dict):
        raise KeyFileError(f"config must be a dict, got {type(key.config).__name__}")
    _check_json(key.config, "config")
    if not isinstance(key.config.get(ENVIRONMENT, {}), dict):
        raise KeyFileError(f"config's {ENVIRONMENT!r} must be an object (where the key was made)")
    q, y = key.queries, key.expected
    if not (isinstance(q, torch.Tensor) and q.dtype == torch.float32 and q.dim() == 4):
        raise KeyFileError(f"queries must be a float32 tensor of shape (N, C, H, W), got {_describe(q)}")
    if q.numel() == 0:
        raise KeyFileError(f"queries are empty (shape {tuple(q.shape)})")
    if not torch.isfinite(q).all():
        raise KeyFileError("queries contain NaN or infinite values")
    if q.min() < 0 or q.max() > 1:
        raise KeyFileError("queries lie outside [0, 1]")
    if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.dim() == 1):
        raise KeyFileError(f"expected must be an int64 tensor of shape (N,), got {_describe(y)}")
    if len(y) != len(q):
        raise KeyFileError(f"expected has {len(y)} labels for {len(q)} queries")
    if len(q) > MAX_QUERIES:
        raise KeyFileError(f"{len(q)} queries is more than a key may hold ({MAX_QUERIES})")
    k = key.config.get("num_classes")
    if k is not None and not (type(k) is int and k >= 2):
        raise KeyFileError(f"config num_classes must be an integer >= 2, got {k!r}")
    b = key.config.get("batch_size")
    if b is not None and not (type(b) is int and b >= 1):
        raise KeyFileError(f"config batch_size must be an integer >= 1, got {b!r}")
    if (y < 0).any():
        raise KeyFileError("expected labels must be >= 0")
    if k is not None and (y >= k).any():
        raise KeyFileError(f"expected label {int(y.max())} is outside the config's num_classes = {k}")
    if not isinstance(key.extras, dict):
        raise KeyFileError(f"extras must be a dict, got {type(key.extras).__name__}")
    for name, t in key.extras.items():
        if not (isinstance(name, str) and _NAME_RE.fullmatch(name)) or name in _RESERVED:
            raise KeyFileError(f"invalid extra name {name!r}: use [A-Za-z0-9_.-]+, not queries/expected")
        if not (isinstance(t, torch.Tensor) and t.dtype in _DTYPES and t.layout == torch.strided):
            raise KeyFileError(f"extra {name!r} must be a dense tensor of a storable dtype, got {_describe(t)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise KeyFileError(f"extra {name!r} contains NaN or infinite values")
    if not (isinstance(key.model_digest, str) and (key.model_digest == "" or _DIGEST_RE.fullmatch(key.model_digest))):
        raise KeyFileError(f"model_digest must be '' or 64 lowercase hex digits, got {key.model_digest!r}")
    if not (isinstance(key.created, str) and _is_utc_iso(key.created)):
        raise KeyFileError(f"created must be an ISO-8601 UTC time, got {key.created!r}")
    if not (isinstance(key.version, str) and key.version):
        raise KeyFileError(f"version must be a non-empty string, got {key.version!r}")


def _check_json(value: Any, where: str) -> None:
    """Raise KeyFileError unless ``value`` is made only of what JSON holds exactly."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise KeyFileError(f"{where} is {value}, which JSON cannot hold")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise KeyFileError(f"{where} has a non-string key {k!r}")
            _check_json(item, f"{where}.{k}")
    else:
        raise KeyFileError(f"{where} is a {type(value).__name__}; use str/int/float/bool/None/list/dict")


def _is_utc_iso(text: str) -> bool:
    """Whether ``text`` is an ISO-8601 time with a zero UTC offset."""
    try:
        return datetime.fromisoformat(text).utcoffset() == timedelta(0)
    except ValueError:
        return False


def _describe(x: Any) -> str:
    """A short description of a value that should have been a tensor."""
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_secret(secret: bytes | None) -> None:
    """Raise SignatureError unless ``secret`` is None or non-empty bytes."""
    if secret is not None and not (isinstance(secret, (bytes, bytearray)) and secret):
        raise SignatureError("the secret must be non-empty bytes")


# --- byte layout ------------------------------------------------------------------------------------


class _Record(NamedTuple):
    """One stored tensor: name, safetensors dtype code, shape and raw little-endian bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def _canonical_json(value: Any) -> str:
    """Sorted-key, compact, ASCII-only JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _tensor_record(name: str, t: torch.Tensor) -> _Record:
    """The record of tensor ``t`` stored as ``name``."""
    t = t.detach().cpu().contiguous()
    return _Record(name, _DTYPES[t.dtype], tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _storage_order(r: _Record) -> tuple[int, str]:
    """Widest items first (keeps every tensor aligned), then by name."""
    return -_ITEMSIZE[r.dtype], r.name


def _header(metadata: dict[str, str], records: list[_Record]) -> bytes:
    """The canonical safetensors header for ``records`` in storage order: JSON padded with spaces to 8 bytes."""
    entries: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for r in records:
        end = offset + math.prod(r.shape) * _ITEMSIZE[r.dtype]
        entries[r.name] = {"dtype": r.dtype, "shape": list(r.shape), "data_offsets": [offset, end]}
        offset = end
    text = _canonical_json(entries).encode("ascii")
    return text + b" " * (-len(text) % 8)


def _encode(metadata: dict[str, str], records: list[_Record]) -> bytes:
    """The canonical safetensors bytes of ``records`` with ``metadata``."""
    records = sorted(records, key=_storage_order)
    header = _header(metadata, records)
    return len(header).to_bytes(8, "little") + header + b"".join(r.data for r in records)


def _corrupt(reason: str) -> KeyFileError:
    """The error for a file whose framing is broken."""
    return KeyFileError(f"key file is truncated or corrupt: {reason}")


def _decode(fh: BinaryIO, size: int) -> tuple[bytes, dict[str, str], list[_Record]]:
    """Check the safetensors framing of the key file ``fh`` (``size`` bytes) and that it is in canonical layout.

    The header is read and checked first (length, entries, the number of queries, the body size it declares
    against the file's size); only then is the body read. Returns the file's bytes, its metadata and records.
    """
    try:
        raw, header = _safetensors.read_header(fh, size, _MAX_HEADER)
    except _safetensors.HeaderError as e:
        raise _corrupt(str(e)) from None
    metadata = header.pop("__metadata__", None)
    if not (isinstance(metadata, dict) and all(isinstance(v, str) and v.isascii() for v in metadata.values())):
        raise _corrupt("header has no ASCII string metadata")
    if not all(k.isascii() for k in [*metadata, *header]):
        raise _corrupt("header holds non-ASCII names")
    specs = []
    for name, entry in header.items():
        try:
            _safetensors.entry_bytes(entry)
        except _safetensors.HeaderError:
            raise _corrupt(f"bad header entry for tensor {name!r}") from None
        specs.append(_Record(name, entry["dtype"], tuple(entry["shape"]), b""))
    n = header["queries"]["shape"][:1] if "queries" in header else []
    if n and n[0] > MAX_QUERIES:
        raise KeyFileError(f"the key declares {n[0]} queries, more than a key may hold ({MAX_QUERIES})")
    body_size = size - _LENGTH - len(raw)
    declared = sum(math.prod(r.shape) * _ITEMSIZE[r.dtype] for r in specs)
    if declared != body_size:
        raise _corrupt(f"tensor data is {body_size} bytes but the header describes {declared}")
    body = fh.read(body_size)
    if len(body) != body_size:
        raise _corrupt("the file ended before its tensor data")
    records, offset = [], 0
    for spec in sorted(specs, key=_storage_order):
        end = offset + math.prod(spec.shape) * _ITEMSIZE[spec.dtype]
        records.append(spec._replace(data=body[offset:end]))
        offset = end
    if _header(metadata, records) != raw:
        raise _corrupt("header is not in canonical form (offsets, order, spacing or escapes altered)")
    return len(raw).to_bytes(_LENGTH, "little") + raw + body, metadata, records


def _mac(secret: bytes, key_json: str, records: list[_Record]) -> str:
    """HMAC-SHA256 hex over the key JSON and each tensor's name, dtype, shape and bytes, each part length-prefixed."""
    mac = hmac.new(bytes(secret), digestmod=hashlib.sha256)
    parts = [_MAC_TAG, key_json.encode("ascii")]
    for r in sorted(records, key=lambda r: r.name):
        shape = _canonical_json(list(r.shape))
        parts += [r.name.encode("ascii"), r.dtype.encode("ascii"), shape.encode("ascii"), r.data]
    for part in parts:
        mac.update(len(part).to_bytes(8, "little"))
        mac.update(part)
    return mac.hexdigest()


def _parse(data: bytes, metadata: dict[str, str], records: list[_Record], secret: bytes | None,
           allow_unsigned: bool) -> KeyFile:
    """Check a decoded key file (safetensors, format, signature, contents) and build its KeyFile."""
    try:
        tensors = safetensors_load(data)
    except Exception as e:  # safetensors raises its own error types; any of them means a corrupt file
        raise _corrupt(f"safetensors cannot read it ({e})") from None
    if metadata.keys() != {KEY_META, SIGNATURE_META}:
        raise KeyFileError(f"not an nnmark key file: metadata keys are {sorted(metadata)}")
    try:
        info = _safetensors.parse_json(metadata[KEY_META])
    except (ValueError, RecursionError) as e:
        raise KeyFileError(f"key metadata is not valid JSON ({e})") from None
    fmt = info.get("format") if isinstance(info, dict) else None
    if type(fmt) is not int or fmt < 1:
        raise KeyFileError(f"unknown key file format {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise KeyFileError(
            f"key file format {fmt} was written by a newer nnmark; nnmark {__version__} reads format {FORMAT_VERSION}"
        )
    if info.keys() != _KEY_FIELDS:
        raise KeyFileError(f"key metadata has fields {sorted(info)}, expected {sorted(_KEY_FIELDS)}")
    signature = metadata[SIGNATURE_META]
    if signature == _UNSIGNED:
        if not allow_unsigned:
            raise SignatureError("key file is unsigned; accept it explicitly (--unsigned, or allow_unsigned=True)")
    elif not _SIG_RE.fullmatch(signature):
        raise SignatureError(f"malformed signature {signature[:40]!r}")
    elif secret is None:
        raise SignatureError(f"key file is signed; a secret is needed to check it (--secret-file or {SECRET_ENV})")
    elif not hmac.compare_digest(signature, _HMAC_PREFIX + _mac(secret, metadata[KEY_META], records)):
        raise SignatureError("signature does not match: the file was altered or the secret is wrong")
    if "queries" not in tensors or "expected" not in tensors:
        raise KeyFileError("key file lacks the 'queries' or 'expected' tensor")
    extras = {}
    for name, t in sorted(tensors.items()):
        if name not in _RESERVED:
            if not name.startswith(_EXTRA_PREFIX):
                raise KeyFileError(f"unexpected tensor {name!r} in key file")
            extras[name.removeprefix(_EXTRA_PREFIX)] = t
    return KeyFile(
        method=info["method"],
        config=info["config"],
        queries=tensors["queries"],
        expected=tensors["expected"],
        extras=extras,
        model_digest=info["model_digest"],
        created=info["created"],
        version=info["version"],
    )
