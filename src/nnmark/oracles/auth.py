"""Bearer tokens for endpoints: read from a file or ``NNMARK_TOKEN``, checked before they go into a header.

A token is any bytes valid in an HTTP header value once surrounding whitespace is stripped: printable
ASCII (0x20-0x7E) and tabs, nothing else (no non-ASCII, no CR or LF, no control characters). Errors
never print the token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nnmark.errors import EndpointError

TOKEN_ENV = "NNMARK_TOKEN"


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
