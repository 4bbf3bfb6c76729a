"""What the command modules share: the error type, progress, secrets, models, data, --out checks, output.

Nothing here imports torch at module level: ``nnmark --help`` imports this module.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import click

from nnmark.options import Option
from nnmark.suspect import ModelSource

if TYPE_CHECKING:
    from torch import nn

    from nnmark.data import Dataset
    from nnmark.models import LoadedModel


class CliError(click.ClickException):
    """An error the user can act on: one line on stderr, exit code 2."""

    exit_code = 2


class Group(click.Group):
    """A command group whose listing shows each command's whole first sentence (click cuts it at ~45 characters)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                text = command.short_help or (command.help or "").strip().split("\n\n")[0]
                rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def debug_enabled(args: list[str] | None = None) -> bool:
    """Whether --debug was given (in ``args``) or NNMARK_DEBUG=1 is set."""
    return os.environ.get("NNMARK_DEBUG", "") not in ("", "0") or "--debug" in (args or [])


def progress_enabled(quiet: bool) -> bool:
    """Progress bars on an interactive stderr, unless ``quiet`` (-q) or NNMARK_PROGRESS=0; NNMARK_PROGRESS=1 asks for
    them on any stderr (a log of a long run under nohup)."""
    setting = os.environ.get("NNMARK_PROGRESS")
    return not quiet and setting != "0" and (setting == "1" or sys.stderr.isatty())


def with_progress(f):
    """Give the command ``progress``: the value the root group decided from -q (``nnmark.cli.main`` passes it as
    click's ``obj``), or ``progress_enabled(False)`` for a command invoked on its own."""
    @click.pass_obj
    @functools.wraps(f)
    def command(progress: bool | None, *args, **kwargs):
        return f(*args, progress=progress_enabled(False) if progress is None else progress, **kwargs)
    return command


class FiniteFloat(click.FloatRange):
    """A float option (optionally within a range) that refuses nan and +-inf: no step, rate, bound or deadline is
    infinite, and an infinite deadline overflows the clock."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        """No range in the help of an unbounded one (click's would read "x<=None")."""
        return "" if self.min is None and self.max is None else super()._describe_range()


class Device(click.ParamType):
    """A --device value: cpu, cuda, cuda:N, mps or auto, resolved to a device that is here
    (``nnmark.envs.resolve_device``; a device that is not there fails the option in one line)."""

    name = "device"

    def convert(self, value, param, ctx):
        from nnmark.envs import resolve_device
        from nnmark.errors import ArgumentError

        try:
            return resolve_device(value)
        except ArgumentError as e:
            self.fail(str(e), param, ctx)


class MicroBatch(click.ParamType):
    """A training micro-batch (``nnmark.models.training.micro_batches``): N >= 1 images per forward and backward pass,
    "auto" (as many as fit the activation budget, measured on the model) or "whole" (whole batches: None)."""

    name = "N|auto|whole"

    def convert(self, value, param, ctx):
        if value is None or value == "whole":
            return None
        if value == "auto":
            return value
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number, 'auto' or 'whole'", param, ctx)
        if number < 1:
            self.fail(f"{value!r} is below 1", param, ctx)
        return number


MICRO_BATCH_HELP = ("images per forward and backward pass, their gradients summed into each step: peak memory follows "
                    "it, not the batch; BatchNorm then normalises each micro-batch apart. auto: as many as keep a "
                    "pass's saved activations within 1 GiB (on a CUDA card, a quarter of its free memory where more), "
                    "measured on the model (on CPU a LeNet-5's or ResNet-20's batches stay whole, a ResNet-50 at "
                    "224x224 trains 12 at a time); whole: whole batches.")


def micro_batch_option(name: str = "--micro-batch", *, what: str = "Training", more: str = ""):
    """A training micro-batch option (``MicroBatch``, default "auto"): ``what`` it bounds, then ``MICRO_BATCH_HELP``
    and ``more``."""
    return click.option(name, type=MicroBatch(), default="auto", show_default=True,
                        help=f"{what}: {MICRO_BATCH_HELP}{more}")


DEVICE_HELP = "Where the model runs: cpu, cuda, cuda:N, mps, or auto (the first accelerator: cuda, then mps, else cpu)."


def device_option(f=None, *, help: str = DEVICE_HELP):
    """--device (``Device``), given to the command as ``device``, a resolved device string; ``@device_option`` or
    ``@device_option(help=...)``."""
    add = click.option("--device", type=Device(), default="cpu", show_default=True, help=help)
    return add if f is None else add(f)


def _check_out(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse an output path whose folder is missing or not writable, before any work is done."""
    if value is None:
        return None
    folder = Path(value).parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {str(folder)!r} does not exist", ctx, param)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"folder {str(folder)!r} is not writable", ctx, param)
    if Path(value).is_dir():
        raise click.BadParameter(f"{value!r} is a folder", ctx, param)
    return value


def out_option(*names: str, help: str, required: bool = True):
    """An output-file option checked (folder exists and is writable) when the command starts."""
    return click.option(*(names or ("--out",)), type=click.Path(dir_okay=False), required=required, help=help,
                        callback=_check_out)


def click_option(option: Option) -> Callable:
    """An ``nnmark.options.Option`` as a click option: --name-with-dashes, typed (a ``Literal`` as a choice, a bool
    as a flag, a tuple as several values), required without a default, default shown, its docstring line as help."""
    flag = "--" + option.name.replace("_", "-")
    text = option.help[:1].upper() + option.help[1:]
    if option.type is bool:
        names = flag if not option.default else f"{flag}/--no-{flag[2:]}"
        return click.option(names, option.name, is_flag=True, default=option.default, help=text)
    kind = click.Choice(option.choices) if option.choices else FiniteFloat() if option.type is float else option.type
    if option.required:
        return click.option(flag, option.name, type=kind, nargs=option.nargs, required=True, help=text)
    return click.option(flag, option.name, type=kind, nargs=option.nargs, default=option.default,
                        show_default=option.default is not None, help=text)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")(f)


def with_secret(f):
    """The --secret-file and --unsigned options."""
    f = click.option("--unsigned", is_flag=True, help="Write/accept a key file without a signature.")(f)
    return click.option("--secret-file", type=click.Path(dir_okay=False),
                        help="File holding the HMAC secret (else NNMARK_SECRET).")(f)


def secret_for_writing(secret_file: str | None, unsigned: bool) -> bytes | None:
    """The secret a new key is signed with (None with --unsigned); an error when there is none."""
    from nnmark import keys

    secret = keys.read_secret(secret_file)
    if secret is None and not unsigned:
        raise CliError("no secret to sign the key: pass --secret-file FILE or set NNMARK_SECRET (or --unsigned)")
    return None if unsigned else secret


MODEL_HELP = ("The model: an nnmark checkpoint (.safetensors), package.module:factory (with --weights), "
              "TorchScript (.pt, .ts), torch.export (.pt2) or ONNX (.onnx).")


def _input_shape(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is not None:
        try:
            value = tuple(int(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"expected C,H,W (three integers), got {value!r}", ctx, param) from None
        if len(value) != 3 or min(value) < 1:
            raise click.BadParameter(f"expected C,H,W (three positive integers), got {value}", ctx, param)
    return value


def _normalize(ctx: click.Context, param: click.Parameter, value: str | None):
    """Refuse a --normalize that no model could take: ``models.card.parse_normalize`` for as many channels as it names
    (the model's own channel count is checked when it loads)."""
    if value is None:
        return None
    from nnmark.errors import ModelError
    from nnmark.models.card import PRESETS, parse_normalize

    preset = PRESETS.get(value.strip().lower())
    channels = len(preset[0]) if preset else max(1, (value.count(",") + 1) // 2)
    try:
        parse_normalize(value, channels)
    except ModelError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    return value


def model_source_options(f):
    """--weights, --input-shape and --normalize: how to read a --model that is not an nnmark checkpoint.

    The command receives them with --model as one value, ``model_source`` (see ``with_model_source``)."""
    from nnmark.models.card import NORMALIZE_HELP

    f = click.option("--normalize", callback=_normalize,
                     help=f"What the model expects of pixels x in [0, 1]: {NORMALIZE_HELP}; the model receives "
                          "(x - mean) / std (default: the card stored with the model or the key, else none).")(f)
    f = click.option("--input-shape", callback=_input_shape, metavar="C,H,W",
                     help="The model's input shape, where its file does not say (TorchScript, factories).")(f)
    return click.option("--weights", type=click.Path(dir_okay=False),
                        help="Safetensors state dict for a package.module:factory --model (loaded strictly).")(f)


def source_value(model_path: str | None, weights=None, input_shape=None, normalize=None, *,
                 alone: tuple[str, ...] = ()) -> ModelSource | None:
    """The ``ModelSource`` of --model and its source options; None without --model, where a source option (other
    than those in ``alone``, which have a meaning of their own) is refused."""
    if model_path is not None:
        return ModelSource(model_path, weights, input_shape, normalize)
    given = {"weights": weights, "input_shape": input_shape, "normalize": normalize}
    if named := [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None
                 and name not in alone]:
        raise CliError(f"{', '.join(named)}: only with --model (they say how to read it)")
    return None


def with_model_source(f):
    """Give the command ``model_source`` (``source_value``) in place of --model and its source options."""
    @functools.wraps(f)
    def command(*args, model_path, weights, input_shape, normalize, **kwargs):
        return f(*args, model_source=source_value(model_path, weights, input_shape, normalize), **kwargs)
    return command


def model_option(f=None, *, required: bool = True, help: str = MODEL_HELP):
    """--model with the model-source options, given to the command as ``model_source``; ``@model_option`` or
    ``@model_option(required=..., help=...)``."""
    def add(f):
        f = model_source_options(with_model_source(f))
        return click.option("--model", "model_path", type=click.Path(dir_okay=False), required=required, help=help)(f)
    return add if f is None else add(f)


def load_model(source: ModelSource, *, needs: tuple[str, ...] = (), purpose: str = ""):
    """The model ``source`` names in pixel space [0, 1], and its ``models.LoadedModel``: the one loader every
    command uses, for every source kind. ``needs`` ("gradients", "training", "saving", "layers": see
    ``LoadedModel.require``) are checked with a one-line error naming ``purpose`` (e.g. "nnmark mark aid")."""
    loaded = source.load()
    for what in needs:
        loaded.require(what, purpose)
    return loaded.model, loaded


def dataset_for(config, spec: str | None):
    """The dataset ``spec`` (default: the one the model's checkpoint names) as the model takes it: converted to
    its channels and input size (bilinear), with its number of classes (``data.load_for``)."""
    from nnmark import data
    from nnmark.errors import DataError

    if not (spec or config.data):
        raise CliError("the model's checkpoint names no dataset: pass --data")
    try:
        return data.load_for(spec or config.data, config)
    except DataError as e:
        if spec:
            raise
        raise CliError(f"{e} (the dataset the checkpoint names; pass --data to use another)") from e


class ToTrain(NamedTuple):
    """What a command that trains works on (``model_to_train``).

    Attributes:
        model: the model to train, in pixel space.
        data: its dataset.
        write: ``write(model, accuracy, out)`` writes the trained model as its source's kind.
        loaded: the --model as loaded (its card, kind and digest); None for --arch.
    """

    model: nn.Module
    data: Dataset
    write: Callable[[nn.Module, float, str], None]
    loaded: LoadedModel | None


def model_to_train(arch: str | None, source: ModelSource | None, data_spec: str | None, *, width: float, seed: int,
                   fresh: bool = True, purpose: str) -> ToTrain:
    """What a command that trains works on.

    ``arch``: a fresh zoo model on ``data_spec``, written as an nnmark checkpoint. ``source`` (any trainable
    source, written back as its kind; default data: the dataset its checkpoint names): a fresh model of its
    architecture, or with ``fresh`` False the model itself. Exactly one of the two. ``seed`` seeds a fresh model's
    initialisation and is what a checkpoint written records; --weights a fresh model would throw away are refused.
    ``purpose`` names the command in the error of a source that cannot be trained.
    """
    import dataclasses

    import torch

    from nnmark import data, models

    if (arch is None) == (source is None):
        both = ", not both" if arch is not None else ""
        raise CliError(f"pass either --arch (a zoo architecture) or --model (a trainable source){both}")
    if arch is not None:
        if not data_spec:
            raise CliError("--arch needs --data")
        ds = data.load(data_spec)
        torch.manual_seed(seed)
        model = models.build(arch, ds.shape, ds.num_classes, width=width)
        config = models.ModelConfig(arch, ds.shape, ds.num_classes, width=width, data=ds.name, seed=seed)

        def write(m, accuracy, out):
            models.save(m, dataclasses.replace(config, accuracy=accuracy), out)
        return ToTrain(model, ds, write, None)
    if fresh and source.weights is not None:
        raise CliError("training from scratch starts from a fresh initialisation: drop --weights (attack finetune, "
                       "or a method that fine-tunes a pretrained --model, goes on training given weights)")
    model, loaded = load_model(source, needs=("training", "saving"), purpose=purpose)
    ds = dataset_for(loaded, data_spec)
    if fresh:
        torch.manual_seed(seed)
        model = loaded.fresh()
    written = loaded
    if loaded.config is not None:  # the checkpoint written records the data (and a fresh model's seed)
        written = dataclasses.replace(loaded, config=dataclasses.replace(
            loaded.config, data=ds.name, seed=seed if fresh else loaded.config.seed))
    return ToTrain(model, ds, lambda m, accuracy, out: models.save_like(written, m, out, accuracy=accuracy), loaded)


def emit(row: dict, as_json: bool, text: str | None = None) -> None:
    """Print a result: ``row`` as one JSON object, or ``text`` (default: key=value pairs)."""
    if as_json:
        click.echo(json.dumps(row))
    else:
        click.echo(text if text is not None else
                   " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
