"""``nnmark watch``: an inventory audited on a schedule, with a state folder, events, metrics and a page."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from pathlib import Path

import click

from nnmark import keys as keyfiles
from nnmark.audit import inventory as audit_inventory
from nnmark.audit import report as audit_report
from nnmark.audit import run as audit_run
from nnmark.audit.sequential import DEFAULT_ALPHA, DEFAULT_BATCH_SIZE
from nnmark.cli._shared import CliError, FiniteFloat, json_option, with_secret
from nnmark.errors import printable
from nnmark.watch import events, exposure, watcher
from nnmark.watch.page import page
from nnmark.watch.server import DEFAULT_HOST, Server
from nnmark.watch.store import Store

WATCH_HELP = """\b
Each round of a target asks a random subset of each key's queries (--sample) and stops a key early as audit
does. A state change of a target x key (ok, failed, inconsistent, misconfigured, unreachable, error) is an
event: on stderr, in the --log, and POSTed to --webhook in Alertmanager's webhook format; unreachable only
after --unreachable-after rounds in a row. SIGTERM or Ctrl-C stops it: the rounds in flight finish (up to
--grace seconds; a second signal abandons them, and an abandoned round is not recorded).
--once: one round of every target, exit 0 all passed, 1 any negative verdict, 2 any error."""


@contextlib.contextmanager
def _signals(stop: threading.Event, abandon: threading.Event):
    """While inside: SIGTERM and SIGINT set ``stop``, a second one ``abandon`` too; the handlers before, after."""
    def handler(signum, frame) -> None:
        if stop.is_set():
            abandon.set()
        stop.set()

    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


DEFAULT_RETENTION = "30d"


def _retention(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """--retention in seconds: a duration such as "30d" or "12h" (units ms, s, m, h, d), or None for "off"."""
    if value.strip() == "off":
        return None
    try:
        return audit_inventory.parse_duration(value.strip(), most=math.inf)
    except ValueError:
        raise click.BadParameter(f'expected a duration above 0 such as "30d" or "12h", or "off", got {value!r}',
                                 ctx, param) from None


def _say(line: str) -> None:
    click.echo(printable(line), err=True)


@click.command(epilog=WATCH_HELP)
@click.option("--inventory", "inventory_path", required=True, type=click.Path(dir_okay=False),
              help="The fleet: a TOML inventory of targets, their keys and intervals.")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="The state folder (SQLite): rounds, verdicts, queries sent, events; a restart resumes from it.")
@click.option("--once", is_flag=True, help="One round of every target, then exit with the audit's exit codes.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Append one HMAC-chained record per round to this JSONL audit log (needs the secret).")
@click.option("--webhook", help="POST each event here, in Alertmanager's webhook format.")
@click.option("--webhook-timeout", type=FiniteFloat(0, min_open=True), default=5.0, show_default=True,
              help="Seconds per webhook try.")
@click.option("--webhook-retries", type=click.IntRange(0, 10), default=2, show_default=True,
              help="Tries after a failed one.")
@click.option("--unreachable-after", type=click.IntRange(1), default=events.DEFAULT_UNREACHABLE_AFTER,
              show_default=True, help="Consecutive unreachable rounds before that is an event.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve /metrics, /healthz and the page / on this port (0: a free one).")
@click.option("--metrics-host", default=DEFAULT_HOST, show_default=True, help="Address for --metrics-port.")
@click.option("--sample", type=click.IntRange(0), default=exposure.DEFAULT_SAMPLE, show_default=True,
              help="Queries of each key asked per round, drawn at random (0: the whole key).")
@click.option("--exposure-warn", type=FiniteFloat(0, 1), default=exposure.DEFAULT_WARN, show_default=True,
              help="Warn once this share of a key has been sent to a target.")
@click.option("--exposure-max", type=FiniteFloat(0, 1), default=exposure.DEFAULT_MAX, show_default=True,
              help="Refuse to ask a key that could pass this share on a target.")
@click.option("--allow-exposure", is_flag=True, help="Ask keys past --exposure-max all the same.")
@click.option("--workers", type=click.IntRange(1), default=audit_run.DEFAULT_WORKERS, show_default=True,
              help="Targets asked at once.")
@click.option("--jitter", type=FiniteFloat(0, 1), default=watcher.DEFAULT_JITTER, show_default=True,
              help="A round is due after its interval times 1 +/- up to this share.")
@click.option("--grace", type=FiniteFloat(0), default=watcher.DEFAULT_GRACE, show_default=True,
              help="Seconds a stop waits for the rounds in flight.")
@click.option("--alpha", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=DEFAULT_ALPHA,
              show_default=True, help="Error bound of a sequential MATCH / NO MATCH claim.")
@click.option("--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Queries per batch before the decision is checked again.")
@click.option("--seed", type=int, help="Seeds the rounds' subsets and orders (default: fresh randomness).")
@click.option("--retention", default=DEFAULT_RETENTION, show_default=True, callback=_retention, metavar="DURATION",
              help="Delete rounds and events older than this from the state folder, a little at each round (\"off\": "
                   "keep them all); at least the longest interval. What was sent to a target is never forgotten.")
@with_secret
@json_option
def watch(inventory_path, state_dir, once, log_path, webhook, webhook_timeout, webhook_retries, unreachable_after,
          metrics_port, metrics_host, sample, exposure_warn, exposure_max, allow_exposure, workers, jitter, grace,
          alpha, batch_size, seed, retention, secret_file, unsigned, as_json) -> None:
    """Audit an inventory's targets at their intervals until stopped; metrics, events and a page.

    \b
    Example:
      nnmark watch --inventory fleet.toml --state watch-state --secret-file secret --once
      nnmark watch --inventory fleet.toml --state watch-state --secret-file secret --metrics-port 9464 \
        --log audit.jsonl --webhook http://127.0.0.1:9095/hook
    """
    if webhook and not webhook.startswith(("http://", "https://")):
        raise CliError(f"--webhook must be an http:// or https:// URL, got {printable(webhook)[:80]}")
    if exposure_warn > exposure_max:
        raise CliError(f"--exposure-warn {exposure_warn} is above --exposure-max {exposure_max}")
    secret = keyfiles.read_secret(secret_file)
    if log_path and secret is None:
        raise CliError("--log needs the owner's secret: pass --secret-file FILE or set NNMARK_SECRET")
    inventory = audit_inventory.load(inventory_path)
    if retention is not None and retention < (longest := max(t.interval for t in inventory.targets)):
        raise CliError(f"--retention {retention:g} s is shorter than the longest interval, {longest:g} s: a target's "
                       "last round would be deleted before its next one")
    options = watcher.Options(
        settings=audit_run.Settings(secret=secret, alpha=alpha, batch_size=batch_size),
        limits=exposure.Limits(sample, exposure_warn, exposure_max, allow_exposure),
        unreachable_after=unreachable_after, jitter=jitter, workers=workers, seed=seed,
        log_path=Path(log_path) if log_path else None, grace=grace, allow_unsigned=unsigned,
        webhook=events.Webhook(webhook, webhook_timeout, webhook_retries) if webhook else None)
    store = Store(state_dir, retention)
    try:
        reports = _run(inventory, store, options, once, metrics_host, metrics_port)
    finally:
        store.close()
    if once:
        if len(reports) < len(inventory.targets):
            raise CliError(f"stopped after {len(reports)} of {len(inventory.targets)} targets: the round is incomplete")
        _finish(reports, as_json)


def _run(inventory, store: Store, options: watcher.Options, once: bool, host: str, port: int | None) -> list:
    """Run the watch (with its HTTP server when a port is given) until stopped; the reports of its rounds."""
    watch = watcher.Watch(inventory.targets, store, options, say=_say)
    meta = {"inventory": str(inventory.path), "state": str(store.path)}
    server = None
    if port is not None:
        server = Server(watch.metrics.registry, lambda: page(store.latest_reports(), store.events(), meta), host, port)
        watch.external_url = server.url
        _say(f"metrics on {server.url}/metrics, page on {server.url}/")
    stop, abandon = threading.Event(), threading.Event()
    _say(f"watching {len(inventory.targets)} targets; state in {store.path}")
    try:
        with _signals(stop, abandon):
            return watch.run(stop, once=once, abandon=abandon)
    finally:
        if server is not None:
            server.close()
        if not once:
            _say("stopped")


def _finish(reports: list[audit_run.TargetReport], as_json: bool) -> None:
    """--once: print the round's reports and exit with the audit's status."""
    if as_json:
        click.echo(audit_report.to_json(reports, {"once": True}))
    status = audit_run.exit_status(reports)
    if status == 2:
        click.echo(f"error: {printable(audit_run.problem(reports))}", err=True)
    sys.exit(status)
