"""Marks: one module per paper method and per baseline, each with ``create`` and ``verify``.

``verify(oracle, key, secret=...)`` picks the method's verifier from the key's method name; keyed
methods (sensitive-sample pairs) re-derive their secret per-user head from the owner's secret.
"""

from __future__ import annotations

from typing import Callable

from nnmark import keys
from nnmark.errors import KeyFileError, SignatureError
from nnmark.keys import KeyFile
from nnmark.marks.integrity import aid, baselines, dbi, pairing
from nnmark.marks.ownership import backdoor_wm, coupled, frontier, ipguard, metafinger
from nnmark.marks.telltale import innformant
from nnmark.marks.verdict import Verdict
from nnmark.oracles import Oracle

VERIFIERS: dict[str, Callable[[Oracle, KeyFile], Verdict]] = {
    dbi.METHOD: dbi.verify,
    "natural": baselines.verify,
    "random": baselines.verify,
    aid.METHOD: aid.verify,
    backdoor_wm.ZHANG: backdoor_wm.verify,
    backdoor_wm.ADI: backdoor_wm.verify,
    ipguard.METHOD: ipguard.verify,
    coupled.METHOD: coupled.verify,
    frontier.METHOD: frontier.verify,
    metafinger.METHOD: metafinger.verify,
    innformant.METHOD: innformant.verify,
}
KEYED_VERIFIERS: dict[str, Callable[..., Verdict]] = {pairing.METHOD: pairing.verify}
"""Verifiers that also take the owner's secret (keyword ``secret``)."""


def verify(oracle: Oracle, key: KeyFile, *, secret: bytes | None = None) -> Verdict:
    """Ask ``oracle`` the key's queries and decide with the key's method; keyed methods need ``secret``."""
    if key.method in KEYED_VERIFIERS:
        if secret is None:
            raise SignatureError(
                f"{key.method} keys need the owner's secret to verify (--secret-file or {keys.SECRET_ENV})"
            )
        return KEYED_VERIFIERS[key.method](oracle, key, secret=secret)
    try:
        verifier = VERIFIERS[key.method]
    except KeyError:
        raise KeyFileError(f"key file method {key.method!r} is not known to this nnmark") from None
    return verifier(oracle, key)


__all__ = ["KEYED_VERIFIERS", "VERIFIERS", "Verdict", "verify"]
