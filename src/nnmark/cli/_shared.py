"""What the command modules share: the error type, progress, secrets, models, data, --out checks, output.

Nothing here imports torch at module level: ``nnmark --help`` imports this module.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click


class CliError(click.ClickException):
    """An error the user can act on: one line on stderr, exit code 2."""

    exit_code = 2


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


def model_option(f):
    return click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True,
                        help="The model: an nnmark checkpoint (.safetensors).")(f)


def load_model(model_path: str):
    """The model behind ``--model`` and its config: the one loader every command uses."""
    from nnmark import models

    return models.load(model_path)


def dataset_for(config, spec: str | None):
    """The dataset ``spec`` (default: the one the model's checkpoint names), checked against the model's input."""
    from nnmark import data
    from nnmark.errors import DataError

    if not (spec or config.data):
        raise CliError("the model's checkpoint names no dataset: pass --data")
    try:
        ds = data.load(spec or config.data)
    except DataError as e:
        if spec:
            raise
        raise CliError(f"{e} (the dataset the checkpoint names; pass --data to use another)") from e
    if ds.shape != tuple(config.input_shape):
        raise CliError(f"data {ds.name} has inputs {ds.shape}, the model expects {tuple(config.input_shape)}")
    return ds


def emit(row: dict, as_json: bool, text: str | None = None) -> None:
    """Print a result: ``row`` as one JSON object, or ``text`` (default: key=value pairs)."""
    if as_json:
        click.echo(json.dumps(row))
    else:
        click.echo(text if text is not None else
                   " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
