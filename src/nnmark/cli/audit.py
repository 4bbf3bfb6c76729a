"""``nnmark audit`` (every key asked of a model or a fleet), ``nnmark keys ls|show`` and ``nnmark log verify``."""

from __future__ import annotations

import json
import sys

import click

from nnmark import envs, keyinfo
from nnmark import keys as keyfiles
from nnmark.audit import log as audit_log
from nnmark.audit import report as audit_report
from nnmark.audit import inventory
from nnmark.audit import run as audit_run
from nnmark.audit import states
from nnmark.audit.sequential import DEFAULT_ALPHA, DEFAULT_BATCH_SIZE
from nnmark.cli._shared import CliError, FiniteFloat, Group, emit, json_option, with_secret
from nnmark.cli.suspect import SuspectOptions, accept_environment_option, suspect_options
from nnmark.errors import printable

AUDIT_HELP = """\b
Summary line per target, e.g.:
  INTACT · MINE (metafinger p=3e-12) · environment float32 · 412 queries
Exit codes: 0 every check passed, 1 any negative verdict, 2 any error: a key that does not load or cannot be
asked (another input shape), an unreachable target, or a target on which nothing was checked.
Keys apply because you name them: a key whose card or digest disagrees with what the target publishes is
still asked, and the disagreement is reported beside its verdict.
Sequential mode stops a key at its first counted flip (integrity), once MATCH / NO MATCH holds at --alpha
at every stopping time (ownership), or once one environment is left (telltale); --no-sequential asks every
query of every key, as verify does.

\b
A nightly check (cron, CI or a Kubernetes CronJob) of a fleet of replicas:
  nnmark audit --keys keys/ --endpoint http://replica-1:8000 --endpoint http://replica-2:8000 \\
    --secret-file secret --report audit.html --log audit.jsonl --json > audit.json"""


def _jobs(key_paths, keys_dir, suspect: SuspectOptions | None, secret: bytes | None,
          unsigned: bool) -> list[tuple[audit_run.Target, list[audit_run.AuditKey]]]:
    """Each target with the keys to ask it: every key of the command line, asked of the local model or each
    --endpoint (built as the Python API builds them: ``audit_run.target_of``, opened when the audit reaches it)."""
    paths = list(key_paths) + (keyinfo.key_files(keys_dir) if keys_dir else [])
    if not paths:
        raise CliError("no keys: pass key files or --keys DIR (or --inventory FILE)")
    if suspect is None:
        raise CliError("pass --model FILE, one or more --endpoint URL, or --inventory FILE")
    audit_keys = audit_run.load_keys(paths, secret=secret, allow_unsigned=unsigned)
    return [(audit_run.target_of(one, env=suspect.env, device=suspect.device, token=suspect.token,
                                 budget=suspect.budget), audit_keys)
            for one in suspect.suspects()]


def _given_with_inventory(key_paths, keys_dir, suspect_given: tuple[str, ...]) -> str:
    """The options given that --inventory cannot go with (which keys, which targets), or ''."""
    return ", ".join((["KEY_PATHS"] if key_paths else []) + (["--keys"] if keys_dir is not None else [])
                     + list(suspect_given))


def _text(reports: list[audit_run.TargetReport]) -> str:
    """Per target its summary line, then one line per key (each line ``printable``)."""
    lines = []
    for report in reports:
        lines.append(f"{report.target}: {audit_report.summary_line(report)}")
        for r in report.keys:
            measured = f"{r.statistic_name} {r.statistic:.3g}; " if r.passed is not None else ""
            lines.append(f"  {r.method or r.key} ({r.purpose or 'unknown'}): {r.decision.upper()} - {measured}"
                         f"{r.queries}/{r.key_size} queries" + (f"; {r.note}" if r.note else "")
                         + (f"; disagrees: {'; '.join(r.disagreements)}" if r.disagreements else "")
                         + (f"; flipped {r.flipped}" if r.flipped else "")
                         + (f"; {line.removeprefix('note: ')}" if (line := envs.note_line(r.details.get("environment")))
                            else "")
                         + (f" [{states.state(r)}]" if r.passed is None else ""))
    return "\n".join(map(printable, lines))


def _error_exit(message: str) -> None:
    """Exit 2 with ``message`` as the one error line on stderr, once the result is printed on stdout."""
    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(2)


@click.command(epilog=AUDIT_HELP)
@click.argument("key_paths", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False), help="Every key file in this folder.")
@click.option("--inventory", "inventory_path", type=click.Path(dir_okay=False),
              help="Audit the fleet this TOML file lists, each target with its own endpoint shape and keys (instead "
                   "of key files, --keys, --model and --endpoint).")
@suspect_options(fleet=True, optional=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write the report here: .md, .json or .html (one self-contained file).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Append one HMAC-chained record to this JSONL audit log (needs the secret).")
@click.option("--alpha", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=DEFAULT_ALPHA,
              show_default=True, help="Error bound of a sequential MATCH / NO MATCH claim.")
@click.option("--no-sequential", is_flag=True, help="Ask every query of every key (as verify does).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the order queries are asked in.")
@click.option("--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Queries per batch before the decision is checked again.")
@click.option("--workers", type=click.IntRange(1), default=audit_run.DEFAULT_WORKERS, show_default=True,
              help="Targets of a fleet asked at once.")
@accept_environment_option
@with_secret
@json_option
def audit(key_paths, keys_dir, inventory_path, suspect, suspect_given, report_path, log_path, alpha, no_sequential,
          seed, batch_size, workers, accept_environment, secret_file, unsigned, as_json) -> None:
    """Ask a model, or a fleet of endpoints, every key: is it intact? is it mine? what runs it?

    \b
    Example:
      nnmark audit dbi.key pairs.key metafinger.key innformant.key --model lenet5.safetensors --secret-file secret
      nnmark audit --keys keys/ --endpoint http://127.0.0.1:8000 --token-file token --secret-file secret \
        --report audit.html --log audit.jsonl
    """
    secret = keyfiles.read_secret(secret_file)
    if log_path and secret is None:
        raise CliError("--log needs the owner's secret: pass --secret-file FILE or set NNMARK_SECRET")
    if inventory_path:
        if given := _given_with_inventory(key_paths, keys_dir, suspect_given):
            raise CliError(f"--inventory names every target and its keys: it cannot go with {given}")
        jobs = inventory.audit_jobs(inventory.load(inventory_path), secret=secret, allow_unsigned=unsigned)
    else:
        jobs = _jobs(key_paths, keys_dir, suspect, secret, unsigned)
    settings = audit_run.Settings(secret=secret, alpha=alpha, seed=seed, sequential=not no_sequential,
                                  batch_size=batch_size, accept_environment=accept_environment)
    reports = audit_run.audit_each(jobs, settings, workers=workers)
    meta = {"alpha": alpha, "seed": seed, "sequential": not no_sequential, "batch_size": batch_size}
    if inventory_path:
        meta["inventory"] = inventory_path
    if report_path:
        audit_report.write_report(report_path, reports, meta)
    if log_path:
        mac = audit_log.append(log_path, audit_run.log_record(reports, settings), secret)
        click.echo(f"logged to {log_path}; last MAC {mac}", err=True)
    click.echo(audit_report.to_json(reports, meta) if as_json else _text(reports))
    status = audit_run.exit_status(reports)
    if status == 2:
        _error_exit(audit_run.problem(reports))
    sys.exit(status)


@click.group(cls=Group)
def keys() -> None:
    """List and show key files without asking any model.

    \b
    Example:
      nnmark keys ls keys/ --secret-file secret
      nnmark keys show keys/dbi.key --json
    """


def _secret_option(f):
    return click.option("--secret-file", type=click.Path(dir_okay=False),
                        help="Check signatures under this secret (else NNMARK_SECRET; none: not checked).")(f)


def _row(info: dict) -> str:
    """One ``keys ls`` line (``printable``): a key file's description, or the error it gives."""
    if "error" in info:
        return printable(f"{info['file']}  ERROR: {info['error']}")
    return printable(
        f"{info['file']}  {info['method']} ({info['purpose'] or 'unknown'})  {info['queries']} queries  "
        f"created {info['created']}  model {str(info['model_digest'] or '-')[:12]}  signature {info['signature']}")


def _key_problems(listed: list[dict]) -> str:
    """One line naming the key files that cannot be used (``keyinfo.problem``), or ''."""
    bad = [(info["file"], keyinfo.problem(info)) for info in listed if keyinfo.problem(info)]
    if not bad:
        return ""
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"{len(bad)} of {len(listed)} key files cannot be used: {bad[0][0]}: {bad[0][1]}{more}"


@keys.command("ls")
@click.argument("folder", type=click.Path(file_okay=False))
@_secret_option
@json_option
def keys_ls(folder, secret_file, as_json) -> None:
    """Each key file in FOLDER: method, purpose, queries, creation time, model digest, signature status.

    Every file named *.key or *.safetensors, and any other file holding a key, is listed; one that does not load
    (truncated, not a key) or whose signature is invalid is listed as an error and makes the exit status 2.

    \b
    Example:
      nnmark keys ls keys/ --secret-file secret
    """
    listed = keyinfo.scan(folder, secret=keyfiles.read_secret(secret_file))
    if as_json:
        click.echo(json.dumps(listed))
    else:
        click.echo("\n".join(_row(info) for info in listed) or printable(f"no key files in {folder}"))
    if why := _key_problems(listed):
        _error_exit(why)


@keys.command("show")
@click.argument("key_path", type=click.Path(dir_okay=False))
@_secret_option
@json_option
def keys_show(key_path, secret_file, as_json) -> None:
    """One key file: method, purpose, created, model digest and card, environment, query count, config, signature
    status.

    With a secret (--secret-file or NNMARK_SECRET) the signature is checked: a key that does not verify under it
    is shown, and the exit status is 2 with one error line. Without one the signature shows as "not checked"
    and the exit status is 0.

    \b
    Example:
      nnmark keys show keys/dbi.key --json
    """
    info = keyinfo.describe(key_path, secret=keyfiles.read_secret(secret_file))
    emit(info, as_json, "\n".join(printable(
        f"{name}: {json.dumps(value) if isinstance(value, (dict, list)) else value}") for name, value in info.items()))
    if why := keyinfo.problem(info):
        _error_exit(f"{key_path}: {why}")


@click.group(cls=Group)
def log() -> None:
    """The audit log that ``nnmark audit --log`` appends to.

    \b
    Example:
      nnmark log verify audit.jsonl --secret-file secret
    """


@log.command("verify")
@click.argument("log_path", type=click.Path(dir_okay=False))
@click.option("--secret-file", type=click.Path(dir_okay=False), help="The owner's secret (else NNMARK_SECRET).")
@click.option("--allow-torn-tail", is_flag=True,
              help="Accept a torn last line (a write cut short): reported, and ignored, since it cannot be verified.")
@json_option
def log_verify(log_path, secret_file, allow_torn_tail, as_json) -> None:
    """Check the HMAC chain: exit 0 when every record verifies, 1 naming the first record that does not.

    A torn last line (a write cut short, or a record edited and then cut: the two look alike) cannot be verified:
    exit 1, unless --allow-torn-tail, which reports it and ignores it (the records before it decide). Prints the
    last MAC: truncation of whole records at the end cannot be seen from the file alone, so keep it elsewhere and
    compare.

    \b
    Example:
      nnmark log verify audit.jsonl --secret-file secret
    """
    secret = keyfiles.read_secret(secret_file)
    if secret is None:
        raise CliError("log verify needs the owner's secret: pass --secret-file FILE or set NNMARK_SECRET")
    check = audit_log.verify_log(log_path, secret, allow_torn_tail=allow_torn_tail)
    emit(check.to_dict(), as_json, check.summary())
    sys.exit(0 if check.ok else 1)
