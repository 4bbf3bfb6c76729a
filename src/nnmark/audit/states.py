"""The state a monitor acts on, per target and key: the check's outcome kept apart from whether it could run.

- ``ok``: the key passed (intact, mine, the expected environment);
- ``failed``: the key's verdict is negative (TAMPERED, NOT MINE, another environment);
- ``inconsistent``: the endpoint answered the same input two ways (``EndpointInconsistent``; its spread is kept
  in the key's result);
- ``misconfigured``: the canary preflight refused the endpoint's format (``EndpointMismatch``: it answers as the
  keyed model does under a named misreading, or unlike it where the key cannot tell format from model);
- ``unreachable``: it could not be asked (``EndpointUnreachable``: connection failures, timeouts, 5xx);
- ``error``: anything else that stopped the key (a key that does not load or fit, a model that does not load).

Only a verdict gives ``ok`` or ``failed``; an error never does, whatever its message says: the state of an error is
decided from its type (``KeyResult.error_type``, a name in ``nnmark.errors``), so an outage, a slow endpoint or a
restarted server is never ``failed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nnmark import errors

if TYPE_CHECKING:
    from nnmark.audit.run import KeyResult, TargetReport

OK, FAILED, INCONSISTENT, MISCONFIGURED, UNREACHABLE, ERROR = STATES = (
    "ok", "failed", "inconsistent", "misconfigured", "unreachable", "error")
ERROR_STATES = ((errors.EndpointInconsistent, INCONSISTENT), (errors.EndpointMismatch, MISCONFIGURED),
                (errors.EndpointUnreachable, UNREACHABLE))
"""The error types that have a state of their own (a subclass has its base's), else ``error``."""
SEVERITY = (FAILED, INCONSISTENT, MISCONFIGURED, UNREACHABLE, ERROR, OK)
"""States from the one that needs a person most; a target is as severe as its worst key."""


def error_type(exc: BaseException) -> str:
    """The name of the nearest type in ``nnmark.errors`` that ``exc`` is an instance of ("NnmarkError" for one
    defined elsewhere), or the type's own name for an error nnmark did not raise on purpose."""
    for cls in type(exc).__mro__:
        if cls.__module__ == errors.__name__:
            return cls.__name__
    return type(exc).__name__


def error_state(name: str) -> str:
    """The state of an error of type ``name`` (``error_type``)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        for base, word in ERROR_STATES:
            if issubclass(cls, base):
                return word
    return ERROR


def state(result: KeyResult) -> str:
    """The state of one key's result: its verdict if it has one, else the state of its error's type."""
    if result.passed is not None:
        return OK if result.passed else FAILED
    return error_state(result.error_type)


def states_of(report: TargetReport) -> dict[str, str]:
    """Each key's state on one target, keyed by the key file's path as the audit names it."""
    return {r.key: state(r) for r in report.keys}


def worst(found: list[str]) -> str:
    """The most severe of ``found`` (``SEVERITY``); ``error`` for none (a target on which nothing was asked)."""
    return min(found, key=SEVERITY.index, default=ERROR)
