"""What a method declares about itself: ``MethodSpec``, one per method, kept in its module as ``SPECS``.

The CLI, ``marks.verify`` and ``nnmark audit`` read these declarations instead of special-casing methods:
access is checked once, purpose decides how a verdict reads, ``keyed`` says the owner's secret is needed
to verify, ``embeds`` says that making a key trains the model it protects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nnmark.errors import AccessError, ArgumentError

PURPOSES = ("integrity", "ownership", "telltale")
CREATE_ACCESS = ("labels", "probabilities", "gradients", "internals", "training")
"""What making a key needs: an oracle's access level, a module's hidden activations ("internals") or the
training data and a trainable model ("training", embedding methods)."""


@dataclass(frozen=True)
class MethodSpec:
    """A method's declaration.

    Attributes:
        name: the key files' method name.
        purpose: integrity (is it intact?), ownership (is it mine?) or telltale (what runs it?).
        summary: one line for listings and help.
        create_access: see ``CREATE_ACCESS``.
        verify_access: the least oracle access verification needs ("labels" or "probabilities").
        embeds: making a key trains the model it protects (the method returns a new model).
        keyed: verification needs the owner's secret (e.g. a per-user head derived from it).
        verdicts: the decision words of a passed and a failed check.
        verify: ``verify(oracle, key[, secret=...]) -> Verdict``.
    """

    name: str
    purpose: str
    summary: str
    create_access: str
    verify_access: str
    embeds: bool
    verdicts: tuple[str, str]
    verify: Callable
    keyed: bool = False

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise ArgumentError(f"purpose must be one of {PURPOSES}, got {self.purpose!r}")
        if self.create_access not in CREATE_ACCESS:
            raise ArgumentError(f"create_access must be one of {CREATE_ACCESS}, got {self.create_access!r}")
        if self.verify_access not in ("labels", "probabilities"):
            raise ArgumentError(f"verify_access must be labels or probabilities, got {self.verify_access!r}")


def require(oracle, access: str, what: str) -> None:
    """Raise AccessError unless ``oracle`` gives ``access``; ``what`` names the step ("verifying a pairs key")."""
    if not oracle.can(access):
        raise AccessError(f"{what} needs {access}; {type(oracle).__name__} gives {oracle.access}")
