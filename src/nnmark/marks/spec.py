"""What a method declares about itself: ``MethodSpec``, one per method, kept in its module as ``SPECS``.

The CLI, ``marks.verify`` and ``nnmark audit`` read these declarations instead of special-casing methods:
access is checked once, purpose decides how a verdict reads, ``keyed`` says the owner's secret is needed
to verify, ``embeds`` says that making a key trains the model it protects. ``nnmark mark NAME`` is generated
from ``create`` and its input kind (``INPUTS``): the kind says what the command gives ``create`` first, and
every other parameter is an option (``nnmark.options``: typed, a named module constant as default, one line in
the docstring's ``Args:`` section), except what a caller supplies from its context (``SUPPLIED``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from nnmark import options as _options
from nnmark.errors import AccessError, ArgumentError
from nnmark.options import Option

PURPOSES = ("integrity", "ownership", "telltale")
CREATE_ACCESS = ("labels", "probabilities", "gradients", "internals", "training")
"""What making a key needs: an oracle's access level, a module's hidden activations ("internals") or the
training data and a trainable model ("training", embedding methods)."""

INPUTS: dict[str, tuple[int, tuple[str, ...]]] = {
    "samples": (2, ("n", "seed")),
    "natural": (2, ("n", "seed")),
    "environments": (3, ("n", "seed")),
    "none": (1, ()),
    "embed": (2, ()),
    "pretrained": (2, ()),
    "embed_or_pretrained": (2, ("pretrained",)),
    "shadow": (3, ("seed", "dataset", "device")),
    "record": (2, ("n", "seed")),
}
"""Input kind -> (how many positional inputs ``create`` takes, what else the caller gives it when it takes them):

- samples: (oracle, n images of the training split drawn by ``seed``);
- natural: (oracle, n images of the natural pool, ``nnmark.data.roles.natural_pool``, drawn by ``seed``);
- environments: (local oracle, {name: environment oracle}, n natural-pool images);
- none: (oracle,);
- embed: (a fresh, untrained model in pixel space, dataset) -> (watermarked model, key);
- pretrained: (the trained model, dataset) -> (watermarked model, key);
- embed_or_pretrained: either; ``pretrained`` says which;
- shadow: (source model, ``metafinger.Pools`` of shadow models, training images), and ``dataset``, the one the
  pools trained on, and ``device``, where the models a method trains beyond the pools train (SAC's scratch models);
- record: (oracle, the folder of queries a served API recorded), and n of them drawn by ``seed`` (DAWN)."""

SUPPLIED = ("model_digest", "meta", "progress", "secret")
"""Keyword parameters a caller fills from its context, never options: the model's digest, what the key records
of its inputs, progress bars, the owner's secret (a method whose create takes it needs one)."""

DEFAULT_N = 100
"""How many images the CLI draws for a method whose kind takes images, unless the method says otherwise."""


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
        verdicts: the decision words of a passed and a failed check.
        verify: ``verify(oracle, key[, secret=...]) -> Verdict``.
        keyed: verification needs the owner's secret (e.g. a per-user head derived from it).
        create: the function that makes a key (``-> KeyFile``; an embedding method's ``-> (model, KeyFile)``).
        inputs: what ``create`` takes first (``INPUTS``).
        shows: the key config's fields ``nnmark mark`` reports.
        describe: ``describe(key) -> dict``, more fields ``nnmark mark`` reports, computed from the key.
        n: the number of images the CLI draws by default (image kinds).
        example: what the method's ``nnmark mark`` example adds to its kind's (e.g. required options).
        whole_key: an audit asks every query at once, even in sequential mode: the verdict is a statistic of the
            whole query set, not a count of per-query matches (the audit keeps the method's own decision and
            p-value), or an answer depends on the batch its query is asked in.
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
    create: Callable | None = None
    inputs: str = "samples"
    shows: tuple[str, ...] = ()
    describe: Callable | None = None
    n: int = DEFAULT_N
    example: str = ""
    whole_key: bool = False

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise ArgumentError(f"purpose must be one of {PURPOSES}, got {self.purpose!r}")
        if self.create_access not in CREATE_ACCESS:
            raise ArgumentError(f"create_access must be one of {CREATE_ACCESS}, got {self.create_access!r}")
        if self.verify_access not in ("labels", "probabilities"):
            raise ArgumentError(f"verify_access must be labels or probabilities, got {self.verify_access!r}")
        if self.inputs not in INPUTS:
            raise ArgumentError(f"inputs must be one of {tuple(INPUTS)}, got {self.inputs!r}")
        if self.create is not None:
            self.options  # checks every option's type now, at import

    @property
    def options(self) -> tuple[Option, ...]:
        """``create``'s options: its parameters after the kind's inputs, less what a caller supplies."""
        skip, given = INPUTS[self.inputs]
        return _options.read(self.create, skip=skip, exclude=(*SUPPLIED, *given))

    def arguments(self, values: dict) -> dict:
        """``create``'s option keywords from option ``values``, a settings dataclass built from its fields: its
        checks run here, so a caller checks the settings before any work (model loading, shadow pools)."""
        return _options.arguments(self.options, values, self.create)

    def call(self, *inputs, arguments: dict, **context):
        """``create(*inputs, **arguments, **context)``: the option keywords (``arguments``) and of ``context``
        (``SUPPLIED`` and the kind's values) what ``create`` takes; ``meta`` less the values ``create`` takes, which
        it records itself."""
        takes = inspect.signature(self.create).parameters
        given = {name: value for name, value in context.items() if name in takes}
        if given.get("meta"):  # what create records itself (e.g. its seed) is not recorded twice
            given["meta"] = {name: value for name, value in given["meta"].items() if name not in takes}
        return self.create(*inputs, **arguments, **given)


def require(oracle, access: str, what: str) -> None:
    """Raise AccessError unless ``oracle`` gives ``access``; ``what`` names the step ("verifying a pairs key")."""
    if not oracle.can(access):
        raise AccessError(f"{what} needs {access}; {type(oracle).__name__} gives {oracle.access}")
