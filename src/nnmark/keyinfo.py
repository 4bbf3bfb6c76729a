"""What a key file holds, read without asking any model: method, purpose, provenance, size and signature status.

``describe(path)`` reads the key's header (safetensors metadata and tensor shapes) and, to report the
signature status, loads it with ``keys.load``: "valid" (checked under the given secret), "invalid" (the
check fails: altered, or another secret), "unsigned", or "not checked" (signed, but no secret given).
``scan(folder)`` describes every key file in a folder, skipping files that are not nnmark key files.

Example::

    for info in keyinfo.scan("keys/", secret=keys.read_secret()):
        print(info["file"], info["method"], info["purpose"], info["queries"], info["signature"])
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import safe_open

from nnmark import keys
from nnmark.errors import KeyFileError, SignatureError
from nnmark.marks import METHODS

VALID, INVALID, UNSIGNED, NOT_CHECKED, MALFORMED = "valid", "invalid", "unsigned", "not checked", "malformed"


def purpose_of(method: str) -> str:
    """The purpose (integrity, ownership, telltale) the method declares; '' for a method nnmark does not know."""
    spec = METHODS.get(method)
    return spec.purpose if spec else ""


def _header(path: Path) -> tuple[dict, str, list[int]]:
    """(the key's JSON metadata, its signature entry, the shape of its queries), or ``KeyFileError``."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shape = f.get_slice("queries").get_shape() if "queries" in f.keys() else []
    except Exception as e:  # safetensors raises its own error types: all mean "not a readable key file"
        raise KeyFileError(f"{path}: not a safetensors key file ({type(e).__name__})") from None
    if keys.KEY_META not in meta:
        raise KeyFileError(f"{path}: not an nnmark key file")
    try:
        info = json.loads(meta[keys.KEY_META])
    except ValueError:
        raise KeyFileError(f"{path}: key metadata is not valid JSON") from None
    if not isinstance(info, dict):
        raise KeyFileError(f"{path}: key metadata is not a JSON object")
    return info, meta.get(keys.SIGNATURE_META, ""), list(shape)


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
    """The key file at ``path``: file, sha256, method, purpose, created, model_digest, model_card, queries,
    query_shape, config, format, nnmark version, signature status. ``KeyFileError`` when it is no key file or
    is malformed."""
    path = Path(path)
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


def key_files(folder: str | os.PathLike) -> list[Path]:
    """The nnmark key files directly in ``folder``, by name; other files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KeyFileError(f"{folder}: no such folder")
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            _header(path)
        except KeyFileError:
            continue
        found.append(path)
    return found


def scan(folder: str | os.PathLike, *, secret: bytes | None = None) -> list[dict]:
    """``describe`` of every key file in ``folder`` (``key_files``)."""
    return [describe(path, secret=secret) for path in key_files(folder)]


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
