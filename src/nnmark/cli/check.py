"""``nnmark verify`` and ``nnmark identify``: ask a suspect a key's queries and report the verdict."""

from __future__ import annotations

import sys

import click

from nnmark import envs, keyinfo, keys, marks
from nnmark.cli._shared import CliError, emit, json_option, with_progress, with_secret
from nnmark.cli.suspect import accept_environment_option, suspect_options
from nnmark.marks.telltale import innformant

VERDICT_HELP = """\b
Verdicts (exit 0 / exit 1):
  INTACT / TAMPERED            integrity keys (dbi, pairs, aid, natural, random): no / some answer changed
  MATCH / NO MATCH             fingerprints (metafinger, ipguard): the suspect is / is not the model or derived from it
  WATERMARKED / NOT WATERMARKED  watermarks (coupled, zhang, adi, frontier): the watermark is / is not in the suspect
A local model whose weights differ from the keyed ones is reported beside the verdict ("weights differ");
the behavioural verdict decides the exit code. A key made in another environment (device, dtype, backend
flags) says so; an integrity key that fails where the change of environment alone could fail it gives no
verdict (exit 2) unless --accept-environment."""


def _style(word: str, passed: bool) -> str:
    """The verdict word, green when the check passed and red when not (plain when stdout is no terminal)."""
    return click.style(word, fg="green" if passed else "red", bold=True)


@click.command(epilog=VERDICT_HELP)
@click.argument("key_path", type=click.Path(dir_okay=False))
@suspect_options
@accept_environment_option
@with_secret
@json_option
@with_progress
def verify(key_path, suspect, accept_environment, secret_file, unsigned, as_json, progress) -> None:
    """Ask a model a key's queries: the check passes (exit 0) or fails (exit 1); 2 on error.

    \b
    Example:
      nnmark verify dbi.key --model lenet5.safetensors --secret-file secret
      nnmark verify dbi.key --endpoint http://127.0.0.1:8000 --token-file token --secret-file secret --json
    """
    secret = keys.read_secret(secret_file)
    key = keys.load(key_path, secret=secret, allow_unsigned=unsigned)
    with suspect.opened(card=keyinfo.card_of(key), defaults=key.config.get("endpoint"), progress=progress,
                        batch_size=key.config.get("batch_size")) as (oracle, where, digest):
        verdict = marks.verify(oracle, key, secret=secret, accept_environment=accept_environment)
    same = digest == key.model_digest if digest and key.model_digest else None
    weights = {True: "identical", False: "differ", None: "unknown"}[same]
    row = {**verdict.to_dict(), "key": key_path, **where, "model_digest_matches": same, "weights": weights}
    if as_json:
        emit(row, True)
    else:
        n = verdict.details.get("n", len(key.expected))
        qualifier = " (behaviour) - weights differ from the keyed model" if same is False else ""
        word = _style(verdict.decision.upper(), verdict.passed)
        click.echo(f"{word}{qualifier}: {verdict.statistic_name} {verdict.statistic:.2%}; "
                   f"{len(verdict.flipped)}/{n} answers differ from the key; {verdict.queries} queries spent")
        if verdict.flipped:
            click.echo(f"flipped: {verdict.flipped}")
        click.echo(verdict.details["preflight"], err=True)
        if line := envs.note_line(verdict.details.get("environment")):
            click.echo(line, err=True)
    sys.exit(0 if verdict.passed else 1)


@click.command()
@click.argument("key_path", type=click.Path(dir_okay=False))
@suspect_options
@with_secret
@json_option
@with_progress
def identify(key_path, suspect, secret_file, unsigned, as_json, progress) -> None:
    """Name the execution environment that answers a telltale key: 0 the key's reference, 1 another.

    \b
    Example:
      nnmark identify innformant.key --endpoint grpc://127.0.0.1:8001 --token-file token --secret-file secret
    """
    key = keys.load(key_path, secret=keys.read_secret(secret_file), allow_unsigned=unsigned)
    if key.method != innformant.METHOD:
        raise CliError(f"identify needs an {innformant.METHOD} key, not a {key.method} key (use verify)")
    with suspect.opened(card=keyinfo.card_of(key), defaults=key.config.get("endpoint"), progress=progress,
                        batch_size=key.config.get("batch_size")) as (oracle, where, _):
        verdict = marks.verify(oracle, key)
    if as_json:
        emit({**verdict.to_dict(), "key": key_path, **where}, True)
    else:
        click.echo(f"{_style(verdict.decision, verdict.passed)} (reference: {key.config['reference']}); "
                   f"{verdict.queries} queries spent")
        for name, count in verdict.details["match_table"].items():
            click.echo(f"  {name:<20} {count}/{len(key.expected)} boundary samples match")
    sys.exit(0 if verdict.passed else 1)
