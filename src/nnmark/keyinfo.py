"""What a key file holds, read without asking any model: method, purpose, provenance, size and signature status.

``describe(path)`` reads the key's header (safetensors metadata and tensor shapes) and, to report the
signature status, loads it with ``keys.load``: "valid" (checked under the given secret), "invalid" (the
check fails: altered, or another secret), "unsigned", or "not checked" (signed, but no secret given).
``scan(folder)`` describes every key file in a folder (``key_files``): each file named ``*.key`` or
``*.safetensors``, and any other regular file whose header is an nnmark key's. A selected file that does not
load is a row with an ``"error"``, never skipped: every key the owner points at is either checked or an error.
Only regular files are opened (a FIFO or a device would block or never end).

Example::

    for info in keyinfo.scan("keys/", secret=keys.read_secret()):
        print(info["file"], info["method"], info["purpose"], info["queries"], info["signature"])
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from safetensors import safe_open

from nnmark import keys
from nnmark.errors import KeyFileError, SignatureError
from nnmark.marks import METHODS

VALID, INVALID, UNSIGNED, NOT_CHECKED, MALFORMED = "valid", "invalid", "unsigned", "not checked", "malformed"
KEY_SUFFIXES = (".key", ".safetensors")
"""File names taken for key files in a folder whatever their contents: one that does not load is an error."""


def purpose_of(method: str) -> str:
    """The purpose (integrity, ownership, telltale) the method declares; '' for a method nnmark does not know."""
    spec = METHODS.get(method)
    return spec.purpose if spec else ""


def regular_file(path: str | os.PathLike) -> str | os.PathLike:
    """``path`` when it names a regular file (after symlinks), else ``KeyFileError``: checked before opening."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"{path}: not a regular file")
    return path


def _header(path: Path) -> tuple[dict, str, list[int]]:
    """(the key's JSON metadata, its signature entry, the shape of its queries), or ``KeyFileError``."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shape = f.get_slice("queries").get_shape() if "queries" in f.keys() else []
    except Exception as e:  # safetensors raises its own error types: all mean "not a readable key file"
        raise KeyFileError(f"{path}: {_unreadable(path, e)}") from None
    if keys.KEY_META not in meta:
        raise KeyFileError(f"{path}: not an nnmark key file")
    try:
        info = json.loads(meta[keys.KEY_META])
    except ValueError:
        raise KeyFileError(f"{path}: key metadata is not valid JSON") from None
    if not isinstance(info, dict):
        raise KeyFileError(f"{path}: key metadata is not a JSON object")
    return info, meta.get(keys.SIGNATURE_META, ""), list(shape)


def _unreadable(path: Path, error: Exception) -> str:
    """Why safetensors cannot open ``path``, in the words of nnmark's own key reader (truncated, corrupt, ...)."""
    try:
        keys.load(path, secret=None, allow_unsigned=True)
    except KeyFileError as e:
        return str(e).removeprefix(f"{path}: ")
    return f"not a safetensors key file ({type(error).__name__})"


def signature_status(path: str | os.PathLike, signature: str, secret: bytes | None) -> str:
    """"valid", "invalid: why", "unsigned", "not checked" (signed, no secret) or "malformed: why" for ``path``."""
    if signature == "unsigned":
        status, secret = UNSIGNED, None
    elif secret is None:
        return NOT_CHECKED
    else:
        status = VALID
    try:
        keys.load(path, secret=secret, allow_unsigned=True)
    except SignatureError as e:
        return f"{INVALID}: {str(e).removeprefix(f'{path}: ')}"
    except KeyFileError as e:
        return f"{MALFORMED}: {str(e).removeprefix(f'{path}: ')}"
    return status


def describe(path: str | os.PathLike, *, secret: bytes | None = None) -> dict:
    """The key file at ``path``: file, sha256, method, purpose, created, model_digest, model_card, environment (where
    it was made: ``nnmark.envs.record``; None for a key made before keys recorded it), queries, query_shape, config,
    format, nnmark version, signature status. ``KeyFileError`` when it is not a regular file,
    no key file, or its header is malformed."""
    path = Path(regular_file(path))
    info, signature, shape = _header(path)
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    method = str(info.get("method", ""))
    return {
        "file": str(path),
        "sha256": _sha256(path),
        "method": method,
        "purpose": purpose_of(method),
        "created": info.get("created"),
        "model_digest": info.get("model_digest"),
        "model_card": config.get("model_card"),
        "environment": config.get(keys.ENVIRONMENT),
        "queries": shape[0] if shape else 0,
        "query_shape": shape[1:],
        "config": config,
        "format": info.get("format"),
        "version": info.get("version"),
        "signature": signature_status(path, signature, secret),
    }


def _sha256(path: Path) -> str:
    """SHA-256 (hex) of the file at ``path``, read in chunks (a key may hold up to keys.MAX_QUERIES queries)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _is_key_file(path: Path) -> bool:
    """Whether ``path`` is taken for a key file: named like one (whatever it is), or a regular file with a key's
    header."""
    if path.name.lower().endswith(KEY_SUFFIXES):
        return True
    try:
        _header(Path(regular_file(path)))
    except KeyFileError:
        return False
    return True


def key_files(folder: str | os.PathLike) -> list[Path]:
    """The key files directly in ``folder`` (``_is_key_file``), by name; other files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KeyFileError(f"{folder}: no such folder")
    return [path for path in sorted(folder.iterdir()) if _is_key_file(path)]


def scan(folder: str | os.PathLike, *, secret: bytes | None = None) -> list[dict]:
    """``describe`` of every key file in ``folder`` (``key_files``); one that does not load is
    ``{"file": path, "error": why}``."""
    return [_described(path, secret) for path in key_files(folder)]


def _described(path: Path, secret: bytes | None) -> dict:
    try:
        return describe(path, secret=secret)
    except KeyFileError as e:
        return {"file": str(path), "error": str(e).removeprefix(f"{path}: ")}


def problem(info: dict) -> str:
    """Why the key file ``info`` describes (``describe`` or a ``scan`` row) cannot be used: it does not load, or its
    signature is invalid or malformed; '' when it can ("not checked" and "unsigned" are not problems)."""
    if "error" in info:
        return info["error"]
    signature = str(info.get("signature", ""))
    return f"signature {signature}" if signature.startswith((INVALID, MALFORMED)) else ""


def card_of(key: keys.KeyFile) -> dict | None:
    """What ``key`` says of the model it was made for: its stored model card, else a card of its queries' (C, H, W)
    and K (the config's ``num_classes``, or the width of its canaries' probability rows); None when K is unknown.

    An endpoint that publishes no class count (a labels-only output) takes K from here."""
    if "model_card" in key.config:
        return key.config["model_card"]
    from nnmark.marks import canary

    rows = key.extras.get(canary.PROBABILITIES)
    classes = key.config.get("num_classes") or (int(rows.shape[1]) if rows is not None else None)
    return {"input_shape": list(key.queries.shape[1:]), "num_classes": classes} if classes else None
