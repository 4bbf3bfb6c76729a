"""What nnmark's endpoint client and server can do yet, and the strict xfails of the cases they cannot.

The endpoint description (``nnmark.oracles.endpoint``: tensor names, layout, dtype, normalisation, output
kind, request ids), preflight canaries (``nnmark.marks.canary``), the binary tensor extension and gRPC in
``nnmark serve`` come together; until then their interop cases are strict xfails (an unexpected pass fails
the run, so they cannot go stale).
"""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from nnmark.cli import main

HAS_ENDPOINT_SPEC = importlib.util.find_spec("nnmark.oracles.endpoint") is not None
HAS_CANARIES = importlib.util.find_spec("nnmark.marks.canary") is not None
SERVE_HAS_GRPC = "--grpc-port" in CliRunner().invoke(main, ["serve", "--help"]).output

INTEROP_EXTRA = "needs the interop extra: pip install -e '.[interop]'"


def triton_client(protocol: str):
    """Triton's client module for ``protocol`` ("http" or "grpc"); skips the test without the interop extra."""
    return pytest.importorskip(f"tritonclient.{protocol}", reason=INTEROP_EXTRA)


NEEDS_SPEC = pytest.mark.xfail(not HAS_ENDPOINT_SPEC, strict=True, reason=(
    "the HTTP client takes only FP32 NCHW inputs and a 'probabilities' output, and has no endpoint flags "
    "(--input-name, --layout, --input-dtype, --normalize, --output-name, --output-kind) nor canaries"))
NEEDS_ID = pytest.mark.xfail(not HAS_ENDPOINT_SPEC, strict=True,
                             reason="the HTTP client sends no request id; KServe answers HTTP 500 without one")
NEEDS_BINARY_SERVE = pytest.mark.xfail(not HAS_ENDPOINT_SPEC, strict=True, reason=(
    "nnmark serve refuses the binary tensor extension (HTTP 400 'malformed JSON')"))
NEEDS_GRPC_SERVE = pytest.mark.xfail(not SERVE_HAS_GRPC, strict=True, reason="nnmark serve has no --grpc-port")
