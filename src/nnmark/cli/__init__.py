"""The ``nnmark`` command line: train, mark, attack, verify, identify, audit, keys, log, serve, envs, bench.

Exit codes, a contract with scripts and monitors:

- 0: done, or the check passed (intact, match, watermarked, the reference environment);
- 1: a negative verdict, and nothing else (tampered, no match, not watermarked, another environment);
- 2: any error (bad arguments, a bad or re-signed key file, a wrong secret, an unreachable or mis-described
  endpoint, a budget overrun, an unexpected failure), reported as one line on stderr. With ``--json`` the
  error is also printed on stdout as ``{"error": ..., "type": ...}``. ``--debug`` (or NNMARK_DEBUG=1) shows
  the traceback of an unexpected failure. Ctrl-C ("interrupted") and SIGTERM ("terminated") are errors too: each
  stops the command the way an error does, so what it started (pool workers, servers) is stopped and nothing is
  left half-written.

Each command group lives in its own module and is imported only when it runs, so ``nnmark --help`` and
``nnmark --version`` never import torch.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import signal
import sys
import threading

import click

from nnmark import __version__
from nnmark.cli._shared import CliError, debug_enabled, progress_enabled
from nnmark.errors import NnmarkError, printable

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("nnmark.cli.train", "Train a zoo model and save a safetensors checkpoint."),
    "mark": ("nnmark.cli.mark", "Make a key of query samples from a model."),
    "attack": ("nnmark.cli.attack", "Change a model as an adversary would."),
    "verify": ("nnmark.cli.check", "Ask a model a key's queries: pass (0) or fail (1)."),
    "identify": ("nnmark.cli.check", "Name the environment that answers a telltale key."),
    "audit": ("nnmark.cli.audit", "Ask a model or a fleet every key at once: one report, one log record."),
    "keys": ("nnmark.cli.audit", "List and show key files without asking any model."),
    "log": ("nnmark.cli.audit", "Check an audit log's HMAC chain."),
    "watch": ("nnmark.cli.watch", "Audit an inventory on a schedule: state, events, Prometheus metrics, a page."),
    "license": ("nnmark.cli.license", "Make a fine-tuned copy of a model per licensee, and the registry to trace them."),
    "trace": ("nnmark.cli.license", "Name the licensee whose copy a leaked model came from."),
    "serve": ("nnmark.cli.serve", "Serve a model over the Open Inference Protocol v2."),
    "envs": ("nnmark.cli.envs", "List execution environments and how outputs differ."),
    "bench": ("nnmark.cli.bench", "Run a benchmark; tables go to docs/benchmarks/."),
}
"""Command name -> (module defining a click command of that name, one-line help shown by ``nnmark --help``)."""

EPILOG = """\b
Example:
  nnmark mark dbi --model lenet5.safetensors --out dbi.key --secret-file secret
  nnmark verify dbi.key --model lenet5.safetensors --secret-file secret

\b
Exit codes: 0 passed, 1 a negative verdict, 2 an error (one line on stderr).
Shell completion (bash): eval "$(_NNMARK_COMPLETE=bash_source nnmark)"; zsh and fish: zsh_source, fish_source."""


class _LazyGroup(click.Group):
    """The top-level group: imports a command's module only when that command runs, and owns the exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return getattr(importlib.import_module(COMMANDS[name][0]), name.replace("-", "_"))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])

    def shell_complete(self, ctx: click.Context, incomplete: str):
        from click.shell_completion import CompletionItem

        return [CompletionItem(name, help=text) for name, (_, text) in COMMANDS.items() if name.startswith(incomplete)]

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NnmarkError as e:
            raise CliError(str(e)) from e
        except OSError as e:
            raise CliError(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from e

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the CLI and exit with the contract's code (0 / 1 from a verdict / 2 for every error)."""
        args = list(sys.argv[1:] if args is None else args)
        try:
            with _sigterm_raises():
                code = super().main(args, prog_name or "nnmark", complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.ClickException as e:
            code = _fail(e.format_message(), type(e.__cause__ or e).__name__, args, usage=isinstance(e, click.UsageError))
        except (click.Abort, KeyboardInterrupt) as e:  # click turns KeyboardInterrupt into Abort
            code = (_fail("terminated", "Terminated", args) if isinstance(e.__cause__ or e, Terminated)
                    else _fail("interrupted", "KeyboardInterrupt", args))
        except Exception as e:  # the last resort: never a traceback, never exit 1
            if debug_enabled(args):
                raise
            code = _fail(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)",
                         type(e).__name__, args)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, as Ctrl-C raises KeyboardInterrupt (so the same cleanup runs)."""


@contextlib.contextmanager
def _sigterm_raises():
    """While inside, SIGTERM raises ``Terminated`` (the main thread only can take signals; elsewhere as it was)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _fail(message: str, kind: str, args: list[str], *, usage: bool = False) -> int:
    """Report an error as one line on stderr (and as JSON on stdout with --json); return exit code 2."""
    line = printable(" ".join(message.split()))
    if usage:
        line += " (see --help)"
    click.echo(f"error: {line}", err=True)
    if "--json" in args:
        click.echo(json.dumps({"error": line, "type": kind}))
    return 2


@click.group("nnmark", cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="nnmark")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error (also NNMARK_DEBUG=1).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (they show only on a terminal anyway).")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """nnmark: query samples that protect trained neural networks.

    Make a key of query samples from a model, keep it signed, and later ask any model (a file, or one behind an
    HTTP endpoint) those queries: is it intact? is it mine? what runs it?
    """
    ctx.obj = progress_enabled(quiet)  # what commands decorated with_progress receive as ``progress``


__all__ = ["CliError", "main"]
