"""Exception types a user can act on; the CLI turns each into a one-line message and exit code 2."""


class NnmarkError(Exception):
    """Base class of every error nnmark raises on purpose."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (or its type name): how another library's error is named inside a
    one-line nnmark error."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class ArgumentError(NnmarkError, ValueError):
    """An argument is out of its documented range or does not fit the others (e.g. a target class >= K).

    Every argument check in nnmark raises this, so the CLI reports it as one line with exit code 2."""


class DataError(NnmarkError):
    """A dataset file or tensor is missing, malformed, or out of range."""


class InputError(NnmarkError):
    """Query inputs have the wrong shape or dtype, are not finite, or lie outside [0, 1]."""


class ModelError(NnmarkError):
    """A model checkpoint or architecture name is invalid."""


class KeyFileError(NnmarkError):
    """A key file is truncated, malformed, or fails its checks."""


class SignatureError(KeyFileError):
    """A key file's signature is missing, wrong, or cannot be checked."""


class AccessError(NnmarkError):
    """An oracle was asked for more than its access level gives (e.g. gradients of a black box)."""


class QueryBudgetExceeded(NnmarkError):
    """An oracle would answer more queries than its budget allows."""


class EndpointError(NnmarkError):
    """A model endpoint is unreachable, speaks no Open Inference Protocol v2, refuses a request, or answers wrongly."""


class EndpointMismatch(EndpointError):
    """An endpoint answers the key's canaries unlike the keyed model: a wrong endpoint format or a different model."""


class EndpointUnreachable(EndpointError):
    """An endpoint could not be asked: connection failures and timeouts (after the retries), server errors (5xx)."""


class EndpointInconsistent(EndpointError):
    """An endpoint answered the same input two different ways; ``spread`` is the largest change of a probability."""

    def __init__(self, message: str, spread: float | None = None):
        super().__init__(message)
        self.spread = spread

    def __reduce__(self):
        return type(self), (str(self), self.spread)


def printable(text: str) -> str:
    """``text`` with every non-printable character (newlines, ANSI escapes, bidi overrides) shown as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
