"""Typed, documented keyword options read from a signature: what the attack and method registries expose.

A parameter is an option when its type is one the command line can give:

- a scalar (``bool``, ``int``, ``float``, ``str``) or a ``Literal[...]`` of scalars (the choices);
- a ``tuple`` of scalars of fixed length (e.g. ``tuple[int, int]``: two values);
- any of these ``| None`` with the default None: an optional value whose default the function decides (its
  docstring line says which, e.g. "step size (default: 1e-4 one-channel, 1e-5 otherwise)");
- a dataclass whose fields are options (a settings object): each field is an option, documented in the
  class's ``Attributes:`` section, and ``arguments`` builds the object back from their values.

A parameter without a default is a required option. Every option is documented by one line ``name: text`` of
the function's ``Args:`` section. A parameter of any other type is an input a caller supplies; it must
default to None (or be named in ``exclude``).

Example::

    def prune(model, *, fraction: float = FRACTION, seed: int = 0): ...   # "Args:\\n fraction: ..."
    [o.name for o in read(prune, skip=1)]          # ["fraction", "seed"]
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

SCALARS = (bool, int, float, str)
REQUIRED = inspect.Parameter.empty
"""The default of a required option."""


@dataclass(frozen=True)
class Option:
    """One option: ``choices`` for a ``Literal[...]`` type, else ``type`` is a scalar; ``nargs`` values for a
    tuple; ``group`` names the settings parameter (a dataclass) the option is a field of."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    nargs: int = 1
    group: str | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def args_section(doc: str | None) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Args:`` (or ``Attributes:``) section, continuation lines joined
    ("a, b: text": both)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() in ("Args:", "Attributes:")), None)
    if start is None:
        return {}
    entries: dict[str, str] = {}
    indent, current = None, []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        match = re.match(r"\s*(\w+(?:, \w+)*): (.*)", line) if depth == indent else None
        if match:
            current = match.group(1).split(", ")
            for name in current:
                entries[name] = match.group(2).strip()
        else:
            for name in current:
                entries[name] += " " + line.strip()
    return entries


def _value_type(hint: Any) -> tuple[type, tuple[Any, ...] | None, int] | None:
    """(scalar type, choices, nargs) of a hint the command line can give, else None."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return type(choices[0]), choices, 1
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if items and Ellipsis not in items and len(set(items)) == 1 and items[0] in SCALARS:
            return items[0], None, len(items)
        return None
    return (hint, None, 1) if hint in SCALARS else None


def _optional(hint: Any) -> Any:
    """X for ``X | None`` (or ``Optional[X]``), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1 and len(typing.get_args(hint)) == 2:
            return rest[0]
    return None


def _settings(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def option(name: str, hint: Any, default: Any, help_text: str, group: str | None = None) -> Option | None:
    """The option a parameter ``name: hint = default`` makes, or None when the command line cannot give its type."""
    inner = _optional(hint)
    value = _value_type(hint if inner is None or default is not None else inner)
    if value is None:
        return None
    kind, choices, nargs = value
    return Option(name, kind, default, help_text, choices, nargs, group)


def read(fn: Callable[..., Any], *, skip: int = 0, exclude: Collection[str] = ()) -> tuple[Option, ...]:
    """The options of ``fn`` (a function, or a class: its constructor) after its first ``skip`` parameters,
    leaving out ``exclude`` (what a caller supplies), in signature order; a settings dataclass parameter
    gives its fields. TypeError for a parameter that is neither an option nor an input defaulting to None."""
    target = fn.__init__ if isinstance(fn, type) else fn
    hints = typing.get_type_hints(target)
    docs = args_section(fn.__doc__)
    found: list[Option] = []
    for p in list(inspect.signature(fn).parameters.values())[skip:]:
        if p.name in exclude or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(p.name)
        if _settings(hint):
            found += [dataclasses.replace(o, group=p.name) for o in read(hint, exclude=exclude)]
        elif (made := option(p.name, hint, p.default, docs.get(p.name, ""))) is not None:
            found.append(made)
        elif p.default is not None:
            raise TypeError(f"{getattr(fn, '__qualname__', fn)}: parameter {p.name} ({hint}) is neither an option "
                            f"(one of {[t.__name__ for t in SCALARS]}, a Literal, a tuple of them, or a settings "
                            "dataclass) nor an input that defaults to None")
    return tuple(found)


def arguments(options: tuple[Option, ...], values: dict[str, Any], fn: Callable[..., Any]) -> dict[str, Any]:
    """Keyword arguments for ``fn`` from option values: the fields of a settings parameter built into its object."""
    hints = typing.get_type_hints(fn)
    kwargs: dict[str, Any] = {o.name: values[o.name] for o in options if o.group is None}
    for group in dict.fromkeys(o.group for o in options if o.group is not None):
        kwargs[group] = hints[group](**{o.name: values[o.name] for o in options if o.group == group})
    return kwargs


def inputs(fn: Callable[..., Any], *, skip: int = 0) -> tuple[str, ...]:
    """Keyword inputs of ``fn`` that are no options (default None, a type the command line cannot give)."""
    hints = typing.get_type_hints(fn)
    return tuple(p.name for p in list(inspect.signature(fn).parameters.values())[skip:]
                 if p.default is None and option(p.name, hints.get(p.name), None, "") is None)
