"""Marks: one module per paper method and per baseline, each with ``create`` and ``verify``.

``verify(oracle, key)`` picks the method's verifier from the key's method name.
"""

from __future__ import annotations

from typing import Callable

from nnmark.errors import KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.integrity import baselines, dbi
from nnmark.marks.verdict import Verdict
from nnmark.oracles import Oracle

VERIFIERS: dict[str, Callable[[Oracle, KeyFile], Verdict]] = {
    dbi.METHOD: dbi.verify,
    "natural": baselines.verify,
    "random": baselines.verify,
}


def verify(oracle: Oracle, key: KeyFile) -> Verdict:
    """Ask ``oracle`` the key's queries and decide with the key's method."""
    try:
        verifier = VERIFIERS[key.method]
    except KeyError:
        raise KeyFileError(f"key file method {key.method!r} is not known to this nnmark") from None
    return verifier(oracle, key)


__all__ = ["VERIFIERS", "Verdict", "verify"]
