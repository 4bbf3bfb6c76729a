"""What the command modules share: the error type, progress, secrets, models, data, --out checks, output.

Nothing here imports torch at module level: ``nnmark --help`` imports this module.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from nnmark.options import Option


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


def progress_enabled() -> bool:
    """Progress bars on an interactive stderr, unless --quiet or NNMARK_PROGRESS=0."""
    ctx = click.get_current_context(silent=True)
    quiet = ctx is not None and ctx.find_root().params.get("quiet", False)
    return not quiet and os.environ.get("NNMARK_PROGRESS", "1") != "0" and sys.stderr.isatty()


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
    kind = click.Choice(option.choices) if option.choices else option.type
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
_SOURCE_OPTIONS = "nnmark.model_source_options"
_LOADED = "nnmark.loaded_model"


def _remember(ctx: click.Context, param: click.Parameter, value):
    """Keep a model-source option for ``load_model`` (so command functions need no parameter for it)."""
    ctx.meta.setdefault(_SOURCE_OPTIONS, {})[param.name] = value
    return value


def _input_shape(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is not None:
        try:
            value = tuple(int(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"expected C,H,W (three integers), got {value!r}", ctx, param) from None
        if len(value) != 3:
            raise click.BadParameter(f"expected C,H,W (three integers), got {len(value)} numbers", ctx, param)
    return _remember(ctx, param, value)


def source_option(name: str):
    """The value of the model-source option ``name`` (weights, input_shape, normalize) given to this command."""
    return click.get_current_context().meta.get(_SOURCE_OPTIONS, {}).get(name)


def model_source_options(f):
    """--weights, --input-shape and --normalize: how to read a --model that is not an nnmark checkpoint."""
    from nnmark.models.card import NORMALIZE_HELP

    f = click.option("--normalize", expose_value=False, callback=_remember,
                     help=f"What the model expects of pixels x in [0, 1]: {NORMALIZE_HELP}; the model receives "
                          "(x - mean) / std (default: the card stored with the model or the key, else none).")(f)
    f = click.option("--input-shape", expose_value=False, callback=_input_shape, metavar="C,H,W",
                     help="The model's input shape, where its file does not say (TorchScript, factories).")(f)
    return click.option("--weights", expose_value=False, callback=_remember, type=click.Path(dir_okay=False),
                        help="Safetensors state dict for a package.module:factory --model (loaded strictly).")(f)


def model_option(f=None, *, required: bool = True, help: str = MODEL_HELP):
    """--model with the model-source options; ``@model_option`` or ``@model_option(required=..., help=...)``."""
    def add(f):
        f = model_source_options(f)
        return click.option("--model", "model_path", type=click.Path(dir_okay=False), required=required, help=help)(f)
    return add if f is None else add(f)


def load_model(model_path: str, *, needs: tuple[str, ...] = (), card: dict | None = None):
    """The model behind ``--model`` in pixel space [0, 1], and its ``models.LoadedModel``: the one loader every
    command uses, for every source kind (``models.load_any`` with --weights, --input-shape and --normalize).

    ``needs`` ("gradients", "training", "saving", "layers": see ``LoadedModel.require``) are checked with a
    one-line error naming the command. ``card``
    (a key's model card) supplies the input shape and normalisation the options do not give.
    """
    from nnmark import models

    ctx = click.get_current_context()
    options = ctx.meta.get(_SOURCE_OPTIONS, {})
    known = models.ModelCard.from_dict(card) if card else None
    shape = options.get("input_shape") or (known.input_shape if known else None)
    normalize = options.get("normalize")
    if normalize is None and known is not None:
        normalize = known.normalize
    loaded = models.load_any(model_path, weights=options.get("weights"), input_shape=shape, normalize=normalize)
    for what in needs:
        loaded.require(what, ctx.command_path)
    ctx.meta[_LOADED] = loaded
    return loaded.model, loaded


def loaded_model():
    """The ``models.LoadedModel`` this command loaded with ``load_model``, or None."""
    return click.get_current_context().meta.get(_LOADED)


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


def model_to_train(arch: str | None, model_path: str | None, data_spec: str | None, *, width: float, seed: int,
                   fresh: bool = True):
    """What a command that trains works on: (model in pixel space, its dataset, ``write(model, accuracy, out)``).

    ``arch``: a fresh zoo model on ``data_spec``, written as an nnmark checkpoint. ``model_path`` (any trainable
    source, written back as its kind; default data: the dataset its checkpoint names): a fresh model of its
    architecture, or with ``fresh`` False the model itself. Exactly one of the two. ``seed`` seeds a fresh model's
    initialisation and is what a checkpoint written records; --weights a fresh model would throw away are refused.
    """
    import dataclasses

    import torch

    from nnmark import data, models

    if (arch is None) == (model_path is None):
        both = ", not both" if arch is not None else ""
        raise CliError(f"pass either --arch (a zoo architecture) or --model (a trainable source){both}")
    if arch is not None:
        if not data_spec:
            raise CliError("--arch needs --data")
        ds = data.load(data_spec)
        torch.manual_seed(seed)
        model = models.build(arch, ds.shape, ds.num_classes, width=width)
        config = models.ModelConfig(arch, ds.shape, ds.num_classes, width=width, data=ds.name, seed=seed)
        return model, ds, lambda m, accuracy, out: models.save(m, dataclasses.replace(config, accuracy=accuracy), out)
    if fresh and source_option("weights") is not None:
        raise CliError("training from scratch starts from a fresh initialisation: drop --weights (attack finetune, "
                       "or a method that fine-tunes a pretrained --model, goes on training given weights)")
    model, loaded = load_model(model_path, needs=("training", "saving"))
    ds = dataset_for(loaded, data_spec)
    if fresh:
        torch.manual_seed(seed)
        model = loaded.fresh()
    if loaded.config is not None:  # the checkpoint written records the data (and a fresh model's seed)
        loaded = dataclasses.replace(loaded, config=dataclasses.replace(
            loaded.config, data=ds.name, seed=seed if fresh else loaded.config.seed))
    return model, ds, lambda m, accuracy, out: models.save_like(loaded, m, out, accuracy=accuracy)


def emit(row: dict, as_json: bool, text: str | None = None) -> None:
    """Print a result: ``row`` as one JSON object, or ``text`` (default: key=value pairs)."""
    if as_json:
        click.echo(json.dumps(row))
    else:
        click.echo(text if text is not None else
                   " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
