"""The owner's fleet as data: a TOML inventory of targets, each with its own endpoint shape, keys and interval.

Read by ``nnmark audit --inventory`` (one round) and ``nnmark watch`` (on a schedule)::

    [defaults]                      # every target inherits these, and may override them
    keys = ["keys/"]                # key files and/or key folders (relative paths: from this file's folder)
    interval = "5m"                 # seconds, or a duration: "90s", "5m", "1h30m"
    timeout = 5

    [[target]]
    name = "replica-1"
    endpoint = "http://replica-1:8000"     # any transport --endpoint takes (grpc://host:port too)
    model_name = "lenet"
    layout = "NHWC"
    token_file = "token"

    [[target]]
    name = "edge-copy"
    model = "models/lenet.safetensors"     # or a local model, as --model takes, run in environment env
    env = "float64"
    keys = ["keys/dbi.key"]

A target's fields are the suspect options of ``nnmark verify`` / ``audit`` under their long names with ``_``
(``model_name``, ``model_version``, ``input_name``, ``layout``, ``input_dtype``, ``normalize``, ``output_name``,
``output_kind``, ``label_name``, ``batch_size``, ``timeout``, ``retries``, ``consistency_check``,
``max_answer_bytes``, ``token_file``, ``budget``; ``weights``, ``input_shape``, ``normalize``, ``env`` and
``device`` for a model), each checked by the very option that parses the flag
(``nnmark.cli.suspect.suspect_options``), plus ``name``, ``keys`` and ``interval``. A bad inventory is refused whole, before anything runs, with an
``InventoryError`` whose one line names the file, the target and the field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from nnmark import keyinfo
from nnmark._io import open_regular
from nnmark.errors import NnmarkError, printable
from nnmark.suspect import DEFAULT_DEVICE, DEFAULT_ENV, ModelSource, Suspect

if TYPE_CHECKING:
    from nnmark.audit import run as audit_run

DEFAULT_INTERVAL = 300.0
"""Seconds between two audits of a target whose inventory names no interval."""
MAX_INTERVAL = 30 * 86400.0
"""The longest interval (30 days): a longer one is a typo, and would overflow a scheduler's clock."""
MAX_BYTES = 1 << 20
"""The largest inventory file read."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
"""A target's name: it names the target in reports, the watch's state and metric labels."""
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
OWN_FIELDS = ("name", "keys", "interval")
WHERE_FIELDS = ("endpoint", "model")
"""Exactly one of these says where a target is; neither may be a default."""
ALIASES = {"model": "model_path", "env": "env_name"}
"""Inventory fields whose suspect option has another parameter name."""
PATH_FIELDS = ("weights", "token_file")
"""Fields holding a file path (relative ones are read from the inventory's folder; ``model`` too)."""


class InventoryError(NnmarkError):
    """An inventory file that cannot be used: unreadable, not TOML, or a target with a bad field."""


@dataclass(frozen=True)
class InventoryTarget:
    """One target of an inventory.

    Attributes:
        name: unique in its inventory.
        interval: seconds between two audits of it.
        keys: the key files to ask it (folders expanded at load), sorted.
        budget: the most queries one audit of it may spend, or None.
        suspect: its ``ModelSource`` or ``EndpointSpec``.
        env: the environment a local model runs in.
        device: the device a local model runs on.
        token_file: the bearer token file of an endpoint (read at each ``audit_target``), or None
            ($NNMARK_TOKEN, as on the command line).
    """

    name: str
    interval: float
    keys: tuple[Path, ...]
    budget: int | None
    suspect: Suspect
    env: str = DEFAULT_ENV
    device: str = DEFAULT_DEVICE
    token_file: Path | None = None

    @property
    def is_endpoint(self) -> bool:
        return not isinstance(self.suspect, ModelSource)

    def audit_target(self, *, token: bytes | None = None) -> audit_run.Target:
        """The audit's ``Target`` of it (``run.target_of``), named by its ``name``; an endpoint is asked with ``token``,
        else with its token file's (read now, so a rotated token is used), else $NNMARK_TOKEN."""
        from nnmark.audit import run as audit_run
        from nnmark.oracles.auth import read_token

        if token is None and self.is_endpoint:
            token = read_token(self.token_file)
        target = audit_run.target_of(self.suspect, env=self.env, device=self.device, token=token,
                                     budget=self.budget)
        return dataclasses.replace(target, name=self.name)


@dataclass(frozen=True)
class Inventory:
    """An inventory file (its absolute path) and its targets, in the file's order."""

    path: Path
    targets: tuple[InventoryTarget, ...]

    def key_files(self) -> list[Path]:
        """Every key file some target asks, once each, sorted."""
        return sorted({key for target in self.targets for key in target.keys})


def load(path: str | os.PathLike) -> Inventory:
    """The inventory at ``path``; ``InventoryError`` naming the file, the target and the field of the first fault."""
    path = Path(path).absolute()
    document = _parse(path)
    unknown = sorted(set(document) - {"defaults", "target"})
    if unknown:
        raise InventoryError(f"{path}: unknown top-level field {unknown[0]!r} (expected [defaults] and [[target]])")
    defaults = document.get("defaults", {})
    targets = document.get("target")
    if not isinstance(defaults, dict):
        raise InventoryError(f"{path}: defaults: must be a table ([defaults])")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, dict) for t in targets):
        raise InventoryError(f"{path}: no targets: list each as a [[target]] table")
    for field in sorted(set(defaults) - (_KNOWN - {"name", *WHERE_FIELDS})):
        why = "each target names its own" if field in _KNOWN else "unknown field"
        raise InventoryError(f"{path}: [defaults]: {field}: {why}")
    loaded = [_target(path, i, defaults, table) for i, table in enumerate(targets)]
    seen: set[str] = set()
    for target in loaded:
        if target.name in seen:
            raise InventoryError(f"{path}: target {target.name!r}: name: another target has this name")
        seen.add(target.name)
    return Inventory(path, tuple(loaded))


def _parse(path: Path) -> dict:
    """The TOML document of a regular file of at most ``MAX_BYTES``."""
    try:
        fd = open_regular(path, os.O_RDONLY)
        if fd is None:
            raise InventoryError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as e:
        raise InventoryError(f"{path}: cannot read the inventory: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise InventoryError(f"{path}: larger than {MAX_BYTES} bytes; not an inventory")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InventoryError(f"{path}: not a TOML file: {printable(e)}") from None


def parse_duration(value: object, most: float = MAX_INTERVAL) -> float:
    """Seconds from a number > 0 or a duration such as "90s", "5m", "1h30m", "250ms" (units ms, s, m, h, d), at
    most ``most`` (default ``MAX_INTERVAL``, an interval's bound); ``ValueError`` otherwise."""
    if isinstance(value, str) and DURATION.fullmatch(value.strip()):
        seconds = sum(float(n) * UNITS[unit] for n, unit in _PART.findall(value))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"expected seconds or a duration such as \"90s\", \"5m\", \"1h30m\", got {value!r}")
    if not (math.isfinite(seconds) and 0 < seconds <= most):
        raise ValueError(f"must be more than 0 s and at most {most:g} s, got {value!r}")
    return seconds


# --- one target -------------------------------------------------------------------------------------------


def _fault(path: Path, name: str, field: str, why: str) -> InventoryError:
    return InventoryError(f"{path}: target {name}: {field}: {printable(why)}")


def _target(path: Path, index: int, defaults: dict, table: dict) -> InventoryTarget:
    """One target's table as an ``InventoryTarget``, with the ``defaults`` its kind (endpoint or model) takes."""
    name = table.get("name")
    shown = repr(name) if isinstance(name, str) else f"#{index + 1}"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _fault(path, shown, "name", "required: 1-64 letters, digits, '.', '_', ':' or '-', first a letter "
                                          "or digit")
    for field in sorted(set(table) - _KNOWN):
        raise _fault(path, shown, field, "unknown field")
    where = [field for field in WHERE_FIELDS if field in table]
    if len(where) != 1:
        raise _fault(path, shown, "endpoint, model", "give exactly one: where the target is")
    other = _ONLY[next(field for field in WHERE_FIELDS if field != where[0])]
    table = {**{field: value for field, value in defaults.items() if field not in other}, **table}
    try:
        interval = parse_duration(table.get("interval", DEFAULT_INTERVAL))
    except ValueError as e:
        raise _fault(path, shown, "interval", str(e)) from None
    options = _suspect_options(path, shown, table, where[0])
    try:
        (suspect,) = options.suspects()
    except NnmarkError as e:
        raise _fault(path, shown, where[0], str(e)) from None
    token_file = table.get("token_file")
    return InventoryTarget(name, interval, _keys(path, shown, table.get("keys")), options.budget, suspect,
                           options.env, options.device, None if token_file is None else _resolved(path, token_file))


def _keys(path: Path, shown: str, value: object) -> tuple[Path, ...]:
    """The key files that key paths (files or folders, relative to the inventory's folder) name, sorted."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fault(path, shown, "keys", "required: a key file or folder, or a list of them")
    found: set[Path] = set()
    for entry in value:
        where = _resolved(path, entry)
        if where.is_dir():
            files = keyinfo.key_files(where)
            if not files:
                raise _fault(path, shown, "keys", f"no key files in folder {where}")
            found.update(files)
        elif where.is_file():
            found.add(where)
        else:
            raise _fault(path, shown, "keys", f"{where}: no such key file or folder")
    return tuple(sorted(found))


def _resolved(path: Path, entry: str) -> Path:
    """``entry`` read from the inventory's folder when relative."""
    return path.parent / Path(entry).expanduser()


# --- the suspect options, parsed by the command line's own options -------------------------------------------


def _command_options() -> tuple[dict[str, click.Parameter], Callable, dict[str, tuple[str, ...]]]:
    """The suspect options as ``verify`` declares them, by inventory field; the function that turns their parsed
    values into ``SuspectOptions`` (``nnmark.cli.suspect.suspect_options``); the fields only one kind of target
    takes, by the field that says where it is."""
    from nnmark.cli.suspect import ENDPOINT_OPTIONS, suspect_options

    build = suspect_options(lambda suspect: suspect)
    renamed = {param: field for field, param in ALIASES.items()}
    by_field = {renamed.get(param.name, param.name): param for param in build.__click_params__}
    only = {"endpoint": ("model_name", "token_file", *ENDPOINT_OPTIONS),
            "model": ("weights", "input_shape", "env", "device")}
    return by_field, build, only


_OPTIONS, _BUILD, _ONLY = _command_options()
_KNOWN = set(OWN_FIELDS) | set(_OPTIONS)


def _toml_type(param: click.Parameter) -> tuple[type, ...]:
    """The TOML value types an option takes: booleans for flags, integers, numbers, else strings."""
    kind = param.type
    if getattr(param, "is_flag", False) or isinstance(kind, click.types.BoolParamType):
        return (bool,)
    if isinstance(kind, click.types.IntParamType):
        return (int,)
    if isinstance(kind, click.types.FloatParamType):
        return (int, float)
    return (str,)


def _value(path: Path, shown: str, field: str, value: object, ctx: click.Context):
    """A given field's value parsed by its option, a path read from the inventory's folder."""
    param, types = _OPTIONS[field], _toml_type(_OPTIONS[field])
    if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
        raise _fault(path, shown, field, f"must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    if field in PATH_FIELDS or (field == "model" and not _factory_spec(path, value)):
        value = str(_resolved(path, value))
    try:
        return param.process_value(ctx, value)
    except click.BadParameter as e:
        raise _fault(path, shown, field, e.message) from None


def _factory_spec(path: Path, value: str) -> bool:
    """Whether ``value`` is a ``package.module:factory`` spec rather than a model file beside the inventory."""
    from nnmark.models.sources import FACTORY_SPEC

    return bool(FACTORY_SPEC.fullmatch(value)) and not _resolved(path, value).exists()


def _suspect_options(path: Path, shown: str, table: dict, where: str):
    """The target's ``SuspectOptions``, built as the command line builds them from the same options."""
    from nnmark.oracles.auth import read_token

    other = next(field for field in WHERE_FIELDS if field != where)
    for field in sorted(set(table) & set(_ONLY[other])):
        raise _fault(path, shown, field, f"only for a target with {other} (this one has {where})")
    ctx = click.Command("inventory", params=list(_OPTIONS.values())).make_context("inventory", [])
    values = {**ctx.params, **{_OPTIONS[field].name: _value(path, shown, field, value, ctx)
                               for field, value in table.items() if field in _OPTIONS}}
    model = values["model_path"]
    if model is not None and not _factory_spec(path, table["model"]) and not Path(model).is_file():
        raise _fault(path, shown, "model", f"{model}: no such model file")
    if values["token_file"] is not None:
        try:
            read_token(values["token_file"])
        except NnmarkError as e:
            raise _fault(path, shown, "token_file", str(e)) from None
    try:
        return _BUILD(**values)
    except (click.ClickException, NnmarkError) as e:
        raise _fault(path, shown, where, e.format_message() if isinstance(e, click.ClickException) else str(e)) \
            from None


def audit_jobs(inventory: Inventory, *, secret: bytes | None,
               allow_unsigned: bool = False) -> list[tuple[audit_run.Target, list[audit_run.AuditKey]]]:
    """Each target's ``Target`` with its keys, for ``run.audit_each``; a key file two targets share is loaded once."""
    from nnmark.audit import run as audit_run

    loaded = {path: audit_run.load_key(path, secret=secret, allow_unsigned=allow_unsigned)
              for path in inventory.key_files()}
    return [(target.audit_target(), [loaded[path] for path in target.keys]) for target in inventory.targets]
