"""The watch: each target of an inventory audited at its interval, with jitter, until stopped.

A target's round draws a random subset of each key's queries (``exposure``), refuses a key past the exposure
bound, asks the rest through the audit's own code path (``nnmark.audit.run.audit_target``, sequential), turns each
key's result into a state (``nnmark.audit.states.state``), and then, in this order: writes the round in one
transaction (``store``), appends one record to the HMAC-chained audit log, updates the metrics, and reports each
state change (``events``) on stderr and to the webhook. At most ``workers`` targets are asked at once; a target
is never in two rounds at once.

A restart resumes: each target's next round is due one interval (with jitter) after its last one finished, and
the announced states, the runs of ``unreachable`` rounds and the queries sent are read back from the store.
Stopping (``stop`` set, e.g. by SIGTERM) schedules nothing more and waits up to ``grace`` seconds for the rounds
in flight; one still running then is abandoned, and never written.
"""

from __future__ import annotations

import dataclasses
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from nnmark.audit import log as audit_log
from nnmark.audit import report as audit_report
from nnmark.audit import run as audit_run
from nnmark.audit.states import state as key_state
from nnmark.errors import NnmarkError, printable
from nnmark.watch import events as watch_events
from nnmark.watch import exposure
from nnmark.watch.metrics import Metrics
from nnmark.watch.store import Event, KeyState, Round, Store, Verdict

DEFAULT_JITTER = 0.1
"""A round is due after the interval times 1 +/- up to this share."""
DEFAULT_GRACE = 30.0
"""Seconds a stop waits for the rounds in flight."""
FIRST_SPREAD = 10.0
"""Seconds over which the first rounds of targets never audited are spread."""
MAX_SLEEP = 1.0
"""The longest the loop sleeps before it looks at the stop flag again."""


class WatchedTarget(Protocol):
    """What the watch needs of an inventory target (``nnmark.audit.inventory.InventoryTarget``)."""

    name: str
    interval: float
    keys: tuple[Path, ...]

    def audit_target(self) -> audit_run.Target: ...


@dataclass(frozen=True)
class Options:
    """How the watch asks and reports.

    Attributes:
        settings: the audit settings (secret, alpha, batch size); each round gets its own seed.
        limits: queries per key per round and the exposure bounds.
        unreachable_after: consecutive ``unreachable`` rounds before it is announced.
        jitter: share of the interval a round's due time moves at random.
        workers: targets asked at once.
        seed: seeds the rounds' subsets and orders (None: fresh randomness).
        log_path: the audit log appended to (needs ``settings.secret``), or None.
        webhook: where events are POSTed, or None.
        grace: seconds a stop waits for the rounds in flight.
        allow_unsigned: accept key files without a signature.
    """

    settings: audit_run.Settings = field(default_factory=audit_run.Settings)
    limits: exposure.Limits = exposure.Limits()
    unreachable_after: int = watch_events.DEFAULT_UNREACHABLE_AFTER
    jitter: float = DEFAULT_JITTER
    workers: int = audit_run.DEFAULT_WORKERS
    seed: int | None = None
    log_path: Path | None = None
    webhook: watch_events.Webhook | None = None
    grace: float = DEFAULT_GRACE
    allow_unsigned: bool = False


def key_labels(paths: Sequence[Path]) -> list[str]:
    """The names keys go by in metrics and events: file names, or the paths when two files share a name."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def load_keys(targets: Sequence[WatchedTarget], options: Options) -> dict[str, list[tuple[str, audit_run.AuditKey]]]:
    """Target name -> its (label, loaded key) pairs; a file several targets share is loaded once."""
    loaded = {path: audit_run.load_key(path, secret=options.settings.secret, allow_unsigned=options.allow_unsigned)
              for path in {p for t in targets for p in t.keys}}
    return {t.name: list(zip(key_labels(t.keys), (loaded[p] for p in t.keys))) for t in targets}


def measured(r: audit_run.KeyResult) -> tuple[str, float | None]:
    """What a key's result measured: its verdict's statistic, or an inconsistent endpoint's spread, or ("", None)."""
    if r.statistic is not None:
        return r.statistic_name, r.statistic
    return ("spread", r.spread) if r.spread is not None else ("", None)


class Watch:
    """The watch over ``targets`` (module docstring); ``say`` prints one progress or event line."""

    def __init__(self, targets: Sequence[WatchedTarget], store: Store, options: Options, *,
                 metrics: Metrics | None = None, say: Callable[[str], None] = print):
        self.targets = list(targets)
        self.store = store
        self.options = options
        self.metrics = metrics or Metrics()
        self.say = say
        self.external_url = ""
        self._rng = random.Random(options.seed)
        self._rng_lock = threading.Lock()
        self.keys = load_keys(self.targets, options)
        self.standing = {t.name: store.states(t.name) for t in self.targets}
        self.exposed = {(t.name, akey.sha256): store.exposed(t.name, akey.sha256)
                        for t in self.targets for _, akey in self.keys[t.name] if akey.key is not None}
        """(target, key digest) -> the key's query indices ever sent to the target."""
        self._restore_metrics()

    # --- one round -----------------------------------------------------------------------------------

    def _round_seed(self) -> int:
        with self._rng_lock:
            return self._rng.getrandbits(31)

    def _plan(self, target: str, akey: audit_run.AuditKey, rng: random.Random):
        """(the key to ask, its subset, why it is refused): the key cut to this round's random subset; a key that did
        not load as it is (the audit reports it); (None, None, why) when the exposure bound refuses it."""
        if akey.key is None:
            return akey, None, ""
        idx = exposure.subset(akey.key, self.options.limits.sample, rng)
        try:
            exposure.check(self.exposed[target, akey.sha256], idx, len(akey.key.expected), self.options.limits)
        except exposure.ExposureRefused as e:
            return None, None, str(e)
        return dataclasses.replace(akey, key=audit_run.sub_key(akey.key, idx)), idx, ""

    def audit(self, t: WatchedTarget, seed: int) -> tuple[audit_run.TargetReport, dict[str, list[int]]]:
        """One round's report on ``t`` (a result per key, in the inventory's order; flipped queries as indices of
        the whole key) and the key indices sent, by key digest."""
        rng = random.Random(seed)
        plans = [(akey, *self._plan(t.name, akey, rng)) for _, akey in self.keys[t.name]]
        settings = dataclasses.replace(self.options.settings, seed=seed)
        askable = [asked for _, asked, _, _ in plans if asked is not None]
        report = audit_run.audit_target(t.audit_target(), askable, settings)
        answered = iter(report.keys)
        results, sent = [], {}
        for akey, asked, idx, refused in plans:
            if asked is None:
                results.append(audit_run.failed_key(akey, refused, exposure.ExposureRefused.__name__))
                continue
            r = next(answered)
            if idx is not None:
                sent[akey.sha256] = exposure.sent_indices(akey.key, idx, r.sent)
                r = dataclasses.replace(r, key_size=len(akey.key.expected), flipped=sorted(idx[r.flipped].tolist()))
            results.append(r)
        return dataclasses.replace(report, keys=results), sent

    def _changes(self, t: WatchedTarget, report: audit_run.TargetReport, now: float):
        """Each key's observed state, its standing after this round, and the events it announces."""
        observed, standing, changes = {}, {}, []
        for (label, _), r in zip(self.keys[t.name], report.keys):
            observed[label] = key_state(r)
            before = self.standing[t.name].get(label, KeyState())
            standing[label], announced = watch_events.step(before, observed[label], self.options.unreachable_after)
            if announced is not None:
                name, value = measured(r)
                note = "; ".join(filter(None, [r.note or r.decision, f"{name} {value:.3g}" if name else ""]))
                changes.append(Event(now, t.name, label, before.announced, announced, note))
        return observed, standing, changes

    def round(self, t: WatchedTarget) -> audit_run.TargetReport:
        """Audit ``t`` once and record it all (module docstring); the round's report."""
        started = time.time()
        seed = self._round_seed()
        report, sent = self.audit(t, seed)
        finished = time.time()
        observed, standing, changes = self._changes(t, report, finished)
        verdicts = [Verdict(label, r.key_sha256, observed[label], r.decision, *measured(r), r.queries, r.note)
                    for (label, _), r in zip(self.keys[t.name], report.keys)]
        saved = {**report.to_dict(), "summary": audit_report.summary_line(report), "seed": seed}
        if self.store.write_round(Round(t.name, started, finished, report.status(), report.problem(), saved, verdicts,
                                        sent, standing, changes)) is None:
            return report  # abandoned at shutdown: nothing recorded
        self.standing[t.name] = {**self.standing[t.name], **standing}
        self._log(report, changes, seed)
        self.metrics.round(t.name, finished, finished - started, report.queries, observed)
        self._exposure(t, sent)
        self.say(f"{t.name}: {audit_report.summary_line(report)} ({finished - started:.1f} s)")
        for e in changes:
            self._announce(e)
        return report

    def _log(self, report: audit_run.TargetReport, changes: list[Event], seed: int) -> None:
        if self.options.log_path is None:
            return
        settings = dataclasses.replace(self.options.settings, seed=seed)
        record = {**audit_run.log_record([report], settings), "events": [dataclasses.asdict(e) for e in changes]}
        try:
            audit_log.append(self.options.log_path, record, settings.secret)
        except NnmarkError as e:
            self.say(f"warning: audit log: {e}")

    def _exposure(self, t: WatchedTarget, sent: dict[str, list[int]]) -> None:
        """Add the indices ``sent`` (by key digest) to each key's exposure on ``t`` and export it; warn once it
        passes the warning bound."""
        for label, akey in self.keys[t.name]:
            if akey.key is None:
                continue
            n, exposed = len(akey.key.expected), self.exposed[t.name, akey.sha256]
            before = len(exposed) / n
            exposed.update(sent.get(akey.sha256, ()))
            share = len(exposed) / n
            self.metrics.exposure.labels(t.name, label).set(share)
            if before <= self.options.limits.warn < share:
                self.say(f"warning: {t.name}: {share:.0%} of key {label} has been sent to it, past --exposure-warn "
                         f"{self.options.limits.warn:.0%}: rotate in a fresh key")

    def _announce(self, e: Event) -> None:
        """An event on stderr and to the webhook (a failing webhook is reported, never raised)."""
        self.metrics.events.labels(e.target).inc()
        self.say(f"event: {e.target} {e.key}: {e.old or 'new'} -> {e.new}" + (f" ({e.note})" if e.note else ""))
        if self.options.webhook is not None:
            if why := self.options.webhook.send(e, self.external_url):
                self.say(f"warning: webhook {self.options.webhook.shown_url}: {why}; event dropped")

    def _restore_metrics(self) -> None:
        """Metrics as the store left them: each target's interval, last round, states and exposure."""
        for t in self.targets:
            self.metrics.target(t.name, t.interval)
            for gauge, last in ((self.metrics.last_audit, self.store.last_finished(t.name)),
                                (self.metrics.last_success, self.store.last_success(t.name))):
                if last is not None:
                    gauge.labels(t.name).set(last)
            for label, s in self.standing[t.name].items():
                self.metrics.key_state(t.name, label, s.observed)
            self._exposure(t, {})

    # --- the schedule ----------------------------------------------------------------------------------

    def _due(self, t: WatchedTarget, last: float | None) -> float:
        """When ``t``'s next round is due: an interval (times 1 +/- jitter) after ``last``; a target never audited
        is due at once, spread over the jitter's share of an interval (at most ``FIRST_SPREAD`` seconds)."""
        with self._rng_lock:
            u = self._rng.random()
        if last is None:
            return time.time() + min(t.interval * self.options.jitter, FIRST_SPREAD) * u
        return last + t.interval * (1 + self.options.jitter * (2 * u - 1))

    def _work(self, jobs: queue.Queue, done: queue.Queue, wake: threading.Event) -> None:
        while (t := jobs.get()) is not None:
            try:
                done.put((t, self.round(t)))
            except Exception as e:  # a bug or a failing disk in one round must not stop the watch
                why = printable(f"round failed: {type(e).__name__}: {e}")
                self.say(f"warning: {t.name}: {why}")
                done.put((t, audit_run.TargetReport(t.name, {}, error=why, error_type=type(e).__name__)))
            wake.set()

    def run(self, stop: threading.Event, *, once: bool = False,
            abandon: threading.Event | None = None) -> list[audit_run.TargetReport]:
        """Audit until ``stop`` is set (``once``: one round of every target, at once); the reports of the rounds
        that finished, in the order they did. ``abandon`` cuts the wait for rounds in flight short."""
        jobs: queue.Queue = queue.Queue()
        done: queue.Queue = queue.Queue()
        wake = threading.Event()
        for _ in range(self.options.workers):
            threading.Thread(target=self._work, args=(jobs, done, wake), daemon=True, name="nnmark-watch").start()
        due = {t.name: time.time() if once else self._due(t, self.store.last_finished(t.name)) for t in self.targets}
        in_flight: set[str] = set()
        reports: list[audit_run.TargetReport] = []
        try:
            while not stop.is_set() and not (once and not due and not in_flight):
                now = time.time()
                for t in self.targets:
                    if t.name in due and t.name not in in_flight and due[t.name] <= now:
                        in_flight.add(t.name)
                        jobs.put(t)
                self._collect(done, in_flight, due, reports, once)
                idle = [due[n] for n in due if n not in in_flight]
                wake.wait(min([MAX_SLEEP, *(d - time.time() for d in idle)]) if idle else MAX_SLEEP)
                wake.clear()
            deadline = time.monotonic() + self.options.grace
            while in_flight and time.monotonic() < deadline and not (abandon and abandon.is_set()):
                wake.wait(min(MAX_SLEEP, deadline - time.monotonic()))
                wake.clear()
                self._collect(done, in_flight, due, reports, once)
        finally:
            for _ in range(self.options.workers):
                jobs.put(None)
        return reports

    def _collect(self, done: queue.Queue, in_flight: set[str], due: dict[str, float],
                 reports: list[audit_run.TargetReport], once: bool) -> None:
        """Take the finished rounds: each target is due again an interval later (``once``: never again)."""
        while True:
            try:
                t, report = done.get_nowait()
            except queue.Empty:
                return
            in_flight.discard(t.name)
            reports.append(report)
            if once:
                due.pop(t.name, None)
            else:
                due[t.name] = self._due(t, time.time())
