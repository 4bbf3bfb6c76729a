"""The watch's Prometheus metrics (``prometheus_client``), in Prometheus' conventions: an ``nnmark_`` prefix, base
units (seconds, ratios), ``_total`` counters, and few bounded labels (target and key names from the inventory,
the six states, the error kinds).

The outcome of a check is kept apart from whether it could run, as blackbox_exporter keeps ``probe_success``
apart from ``up``: ``nnmark_key_state`` says what a key found (one series per state, 1 for the current one),
``nnmark_last_success_timestamp_seconds`` when a round last decided every key, ``nnmark_errors_total`` why a
round could not.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nnmark.audit.states import STATES
from nnmark.watch.store import DECIDED
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Every metric of one watch, in its own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.state = Gauge("nnmark_key_state", "1 for the key's current state on the target, 0 for the others.",
                           ["target", "key", "state"], registry=r)
        self.interval = Gauge("nnmark_target_interval_seconds", "The target's audit interval.", ["target"],
                              registry=r)
        self.last_audit = Gauge("nnmark_last_audit_timestamp_seconds", "When the target's last round finished.",
                                ["target"], registry=r)
        self.last_success = Gauge("nnmark_last_success_timestamp_seconds",
                                  "When a round of the target last decided every key (ok or failed).", ["target"],
                                  registry=r)
        self.rounds = Counter("nnmark_rounds", "Rounds finished.", ["target"], registry=r)
        self.queries = Counter("nnmark_queries", "Inputs sent to the target.", ["target"], registry=r)
        self.errors = Counter("nnmark_errors", "Keys a round could not decide, by state (error kind).",
                              ["target", "kind"], registry=r)
        self.events = Counter("nnmark_events", "State changes announced.", ["target"], registry=r)
        self.duration = Histogram("nnmark_audit_duration_seconds", "Time one target's round took.", ["target"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.exposure = Gauge("nnmark_key_exposure_ratio",
                              "Share of the key's distinct queries ever sent to the target.", ["target", "key"],
                              registry=r)

    def target(self, name: str, interval: float) -> None:
        """Declare a target (its interval, and its counters at 0 so rate() has a start)."""
        self.interval.labels(name).set(interval)
        self.rounds.labels(name)
        self.queries.labels(name)
        self.events.labels(name)

    def key_state(self, target: str, key: str, state: str) -> None:
        for s in STATES:
            self.state.labels(target, key, s).set(1 if s == state else 0)

    def round(self, target: str, finished: float, duration: float, queries: int, states: dict[str, str]) -> None:
        """Record a finished round: ``states`` maps each key to the state this round observed."""
        self.rounds.labels(target).inc()
        self.queries.labels(target).inc(queries)
        self.duration.labels(target).observe(duration)
        self.last_audit.labels(target).set(finished)
        for key, state in states.items():
            self.key_state(target, key, state)
            if state not in DECIDED:
                self.errors.labels(target, state).inc()
        if states and all(s in DECIDED for s in states.values()):
            self.last_success.labels(target).set(finished)
