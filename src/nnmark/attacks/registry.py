"""The attack contract and its two registries: ``ATTACKS`` (model -> model) and ``TRANSFORMS`` (input -> input).

An attack is a plain function ``f(model, *data, **options) -> nn.Module``:

- ``model`` comes first and is left untouched; the result is a new model of the same architecture (unless an
  option names another, a student's), in eval mode (``reports=True``: a pair (model, report), the report saying
  what the attack measured, with the copy's accuracy on a ``test`` split when one is given);
- ``data`` are the positional inputs its ``data`` kind names (``DATA``): none; the attacker's labelled
  images ``x`` (N, C, H, W) in [0, 1] and labels ``y`` (N,) int64; another domain's ``split``; or the
  attacker's own watermark set ``x_wm``, ``y_wm`` plus clean labelled data ``clean``;
- every other parameter is an option (``nnmark.options``): typed (int, float, bool, str, ``Literal[...]``, or
  one of these ``| None``), with a default that is a named module constant (flags default to False, seeds to
  0), documented by one line ``name: text`` in the docstring's ``Args:`` section. A keyword input that is no
  option (a test split, a student model) defaults to None;
- an attack that measures nothing of its own but trains a copy a thief keeps (distillation, fine-tuning) registers
  ``reports=ACCURACY``: its function returns the bare model, and calling the spec returns (model,
  ``measure.AccuracyReport`` on the ``test`` keyword), so every thief's attack reports the copy's accuracy;
- the same seed gives the same weights;
- an attack that needs nothing of the model but its answers (extraction) may also register ``oracle``: the same
  attack against any ``nnmark.oracles.Oracle``, ``oracle(oracle, x, y, **options)`` with the attack's options,
  its copy a fresh zoo model (``student_arch``, never "same": an oracle shows no architecture); the command then
  takes ``--endpoint`` beside ``--model``.

A transform is a class whose constructor takes only options (the same rules) and whose instances map a
batch x (N, C, H, W) in [0, 1] to a new batch of the same shape in [0, 1].

Both register where they are defined, with a name, a one-line summary and what they apply to; the CLI's
``nnmark attack <name>`` commands and the registry-wide test are built from the registries.

Example::

    @register_attack("prune", summary="Zero the smallest weights.", applies_to="Conv2d/Linear models")
    def prune(model: nn.Module, fraction: float = FRACTION) -> nn.Module: ...

    ATTACKS["prune"](model, 0.1)            # the plain function
    [o.name for o in ATTACKS["prune"].options]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from nnmark import options as _options
from nnmark.attacks.measure import AccuracyReport, split_accuracy
from nnmark.errors import ArgumentError
from nnmark.options import Option

DataKind = Literal["none", "attacker", "domain", "watermark"]
ACCURACY = "accuracy"
"""``reports`` of an attack whose spec, not its function, reports the copy's test accuracy."""
DATA: dict[str, tuple[str, ...]] = {
    "none": (),
    "attacker": ("x", "y"),
    "domain": ("split",),
    "watermark": ("x_wm", "y_wm", "clean"),
}
"""Data kind -> the positional parameters that follow ``model``."""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Spec:
    """A registered attack or transform: calling it calls ``fn`` (the function, or the transform's class)."""

    name: str
    fn: Callable[..., Any]
    summary: str
    applies_to: str
    data: DataKind = "none"
    reports: bool | Literal["accuracy"] = False
    needs: tuple[str, ...] = ()
    oracle: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``fn``'s result; with ``reports=ACCURACY``, (model, its ``AccuracyReport`` on the ``test`` keyword)."""
        if self.reports != ACCURACY:
            return self.fn(*args, **kwargs)
        test = kwargs.pop("test", None)
        model = self.fn(*args, **kwargs)
        return model, AccuracyReport(split_accuracy(model, test))

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.fn)

    @property
    def model_needs(self) -> tuple[str, ...]:
        """What the attacked model must allow (``models.LoadedModel.require``): writing back, training when the
        attack takes data (it trains), and what the attack declares (e.g. "layers" for pruning)."""
        return ("saving", *(("training",) if self.data != "none" else ()), *self.needs)

    @property
    def options(self) -> tuple[Option, ...]:
        """The parameters after the model and its data that are options (``nnmark.options``), in signature
        order, each with its docstring line."""
        return _options.read(self.fn, skip=self._skip)

    def inputs(self) -> tuple[str, ...]:
        """Keyword inputs that are no options (default None): supplied by a caller that has them."""
        own = _options.inputs(self.fn, skip=self._skip)
        return (*own, "test") if self.reports == ACCURACY else own

    @property
    def _skip(self) -> int:
        return 0 if isinstance(self.fn, type) else 1 + len(DATA[self.data])


ATTACKS: dict[str, Spec] = {}
"""Name -> the registered model -> model attack."""

TRANSFORMS: dict[str, Spec] = {}
"""Name -> the registered input transform (calling the spec constructs it; every argument has a default)."""


def _register(registry: dict[str, Spec], spec: Spec) -> None:
    if spec.name in registry:
        raise ArgumentError(f"{spec.name!r} is registered twice")
    names = list(inspect.signature(spec.fn).parameters)
    expected = [] if isinstance(spec.fn, type) else ["model", *DATA[spec.data]]
    if names[: len(expected)] != expected:
        raise TypeError(f"{spec.name}: a {spec.data!r} attack takes ({', '.join(expected)}, ...), got {names}")
    spec.options  # checks every option's type now, at import
    if spec.oracle is not None and (spec.data != "attacker" or "student_arch" not in names):
        raise TypeError(f"{spec.name}: an attack that runs on an oracle takes the thief's images (data 'attacker') "
                        "and a student_arch option")
    registry[spec.name] = spec


def register_attack(name: str, *, summary: str, applies_to: str, data: DataKind = "none",
                    reports: bool | Literal["accuracy"] = False, needs: tuple[str, ...] = (),
                    oracle: Callable[..., Any] | None = None) -> Callable[[F], F]:
    """Register the decorated function in ``ATTACKS`` under ``name``; the function itself is returned unchanged.

    ``needs``: what the model must allow beyond being written back (and trained, for an attack that takes data),
    e.g. ("layers",) for an attack that looks for nn.Conv2d / nn.Linear modules. ``oracle``: the same attack
    against an oracle (see the module docstring)."""
    def add(fn: F) -> F:
        _register(ATTACKS, Spec(name, fn, summary, applies_to, data, reports, needs, oracle))
        return fn
    return add


def register_transform(name: str, *, summary: str, applies_to: str = "any input batch in [0, 1]"
                       ) -> Callable[[F], F]:
    """Register the decorated transform class in ``TRANSFORMS`` under ``name``; the class is returned unchanged."""
    def add(cls: F) -> F:
        _register(TRANSFORMS, Spec(name, cls, summary, applies_to))
        return cls
    return add
