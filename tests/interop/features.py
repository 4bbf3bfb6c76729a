"""What the interop tests need of the main virtualenv."""

from __future__ import annotations

import pytest

INTEROP_EXTRA = "needs the interop extra: pip install -e '.[interop]'"

def triton_client(protocol: str):
    """Triton's client module for ``protocol`` ("http" or "grpc"); skips the test without the interop extra."""
    return pytest.importorskip(f"tritonclient.{protocol}", reason=INTEROP_EXTRA)
