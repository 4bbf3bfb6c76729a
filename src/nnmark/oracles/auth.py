"""Bearer tokens for endpoints: read from a file or ``NNMARK_TOKEN``, checked before they go into a header; and
a server's named clients, each with a token of its own (``read_clients``).

A token is any bytes valid in an HTTP header value once surrounding whitespace is stripped: printable
ASCII (0x20-0x7E) and tabs, nothing else (no non-ASCII, no CR or LF, no control characters). Errors
never print the token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from nnmark.errors import ArgumentError, EndpointError

TOKEN_ENV = "NNMARK_TOKEN"
CLIENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CLIENT_RULE = "a client name is 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit)"
"""What ``CLIENT_RE`` accepts, as the refusals of a bad name say it."""
MAX_CLIENTS_BYTES = 1 << 20
"""The largest clients file read."""


def check_token(token: str | bytes, source: str = "token") -> bytes:
    """``token`` stripped of surrounding whitespace, as bytes; ``EndpointError`` (naming only ``source``)
    when it is empty or holds a byte an HTTP header value cannot carry."""
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else bytes(token)
    raw = raw.strip()
    if not raw:
        raise EndpointError(f"{source} is empty")
    bad = next((i for i, b in enumerate(raw) if not (0x20 <= b <= 0x7E or b == 0x09)), None)
    if bad is not None:
        raise EndpointError(f"{source} holds a character an HTTP header cannot carry (at position {bad}: non-ASCII, "
                            f"a line break or a control character)")
    return raw


def read_token(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The bearer token in the file at ``path``, else ``$NNMARK_TOKEN``, else None; checked by ``check_token``."""
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise EndpointError(f"{path}: cannot read token file: {e.strerror or e}") from None
        return check_token(data, f"token file {path}")
    value = (os.environ if environ is None else environ).get(TOKEN_ENV)
    if value is None or not value.strip():
        return None
    return check_token(value, TOKEN_ENV)


def check_client(name: str) -> str:
    """``name`` when it is a client's name (``CLIENT_RE``); ArgumentError otherwise."""
    if not isinstance(name, str) or not CLIENT_RE.fullmatch(name):
        raise ArgumentError(f"{CLIENT_RULE}, got {str(name)[:80]!r}")
    return name


def read_clients(path: str | os.PathLike) -> dict[str, bytes]:
    """A server's clients, name -> token, from the file at ``path``: one ``NAME TOKEN`` per line (blank lines and
    lines starting with '#' skipped). EndpointError, naming the line but never a token, for an unreadable or
    oversized file, a bad name or token, a name or a token given twice, or no client at all."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CLIENTS_BYTES + 1)
    except OSError as e:
        raise EndpointError(f"{path}: cannot read clients file: {e.strerror or e}") from None
    if len(data) > MAX_CLIENTS_BYTES:
        raise EndpointError(f"clients file {path} is larger than {MAX_CLIENTS_BYTES:,} bytes")
    clients: dict[str, bytes] = {}
    for number, line in enumerate(data.splitlines(), 1):
        fields = line.strip().split(None, 1)
        if not fields or fields[0].startswith(b"#"):
            continue
        where = f"clients file {path} line {number}"
        name = fields[0].decode("ascii", "replace")
        if not CLIENT_RE.fullmatch(name):
            raise EndpointError(f"{where}: {CLIENT_RULE}")
        if len(fields) < 2:
            raise EndpointError(f"{where}: expected NAME TOKEN")
        token = check_token(fields[1], f"{where}'s token")
        if name in clients:
            raise EndpointError(f"{where}: client {name!r} is named twice")
        if token in clients.values():
            raise EndpointError(f"{where}: client {name!r} has the token of another client")
        clients[name] = token
    if not clients:
        raise EndpointError(f"clients file {path} names no client")
    return clients
