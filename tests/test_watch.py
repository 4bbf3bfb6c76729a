"""nnmark watch in miniature: states, events, the webhook, metrics, exposure, the store and a restart.

The targets are local oracles asked through the audit's own code path (``audit_run.audit_target``); a target
"swapped" answers another label, an "outage" refuses to open as an unreachable endpoint does.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from nnmark import keys
from nnmark.audit import run as audit_run
from nnmark.audit.sequential import DEFAULT_BATCH_SIZE
from nnmark.errors import EndpointUnreachable
from nnmark.marks.integrity import baselines
from nnmark.oracles import TorchOracle
from nnmark.watch import events, exposure, watcher
from nnmark.watch import store as store_module
from nnmark.watch.page import page
from nnmark.watch.server import Server
from nnmark.watch.store import KeyState, Store

SECRET = b"watch secret"
SHAPE = (1, 8, 8)
LABEL, OTHER = 3, 4
N = 10
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def key_files(tmp_path_factory, constant_model):
    """Two signed natural-sample keys of a model that answers LABEL (N queries each)."""
    folder = tmp_path_factory.mktemp("watch-keys")
    oracle = TorchOracle(constant_model(LABEL), SHAPE)
    paths = []
    for seed in (0, 1):
        samples = torch.rand(N, *SHAPE, generator=torch.Generator().manual_seed(seed))
        paths.append(folder / f"natural{seed}.key")
        keys.save(baselines.natural(oracle, samples), paths[-1], secret=SECRET)
    return tuple(paths)


@dataclass
class Local:
    """An inventory target asked in-process: answers ``label`` (a swapped model answers another), or is down."""

    name: str
    keys: tuple[Path, ...]
    model: torch.nn.Module
    interval: float = 3600.0
    down: bool = False
    opened: int = field(default=0)

    def audit_target(self) -> audit_run.Target:
        @contextlib.contextmanager
        def open_oracle():
            self.opened += 1
            if self.down:
                raise EndpointUnreachable(f"{self.name}: connection refused")
            yield TorchOracle(self.model, SHAPE)

        return audit_run.Target(self.name, open_oracle)


@pytest.fixture
def fleet(key_files, constant_model):
    return [Local("replica-1", key_files, constant_model(LABEL)), Local("replica-2", key_files[:1],
                                                                         constant_model(LABEL))]


def _watch(targets, state_dir, said=None, **options) -> watcher.Watch:
    options.setdefault("settings", audit_run.Settings(secret=SECRET))
    options.setdefault("limits", exposure.Limits(sample=0, allow=True))  # the whole key each round
    lines = said if said is not None else []
    return watcher.Watch(targets, Store(state_dir), watcher.Options(**options), say=lines.append)


class Receiver:
    """A local webhook receiver: keeps each JSON body POSTed; answers ``code``."""

    def __init__(self, code: int = 200):
        self.bodies: list[dict] = []
        bodies, answer = self.bodies, code

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# --- events ---------------------------------------------------------------------------------------------------


def test_unreachable_is_announced_only_after_n_consecutive_rounds():
    s = KeyState("ok", "ok", 0)
    for round_ in (1, 2):
        s, announced = events.step(s, "unreachable", 3)
        assert (announced, s.announced, s.streak) == (None, "ok", round_)
    s, announced = events.step(s, "unreachable", 3)
    assert (announced, s.announced, s.streak) == ("unreachable", "unreachable", 3)
    assert events.step(s, "unreachable", 3)[1] is None  # already announced
    s, announced = events.step(s, "ok", 3)
    assert (announced, s.streak) == ("ok", 0)
    # a short outage resets: two unreachable, one ok, two unreachable is no event at all
    s = KeyState("ok", "ok", 0)
    for observed in ("unreachable", "unreachable", "ok", "unreachable", "unreachable"):
        s, announced = events.step(s, observed, 3)
        assert announced is None


def test_other_changes_are_announced_at_once_and_a_first_ok_is_no_event():
    assert events.step(KeyState(), "ok", 3) == (KeyState("ok", "ok", 0), None)
    assert events.step(KeyState(), "failed", 3) == (KeyState("failed", "failed", 0), "failed")
    assert events.step(KeyState(), "unreachable", 1)[1] == "unreachable"
    assert events.step(KeyState("ok", "ok", 0), "failed", 3)[1] == "failed"
    assert events.step(KeyState("failed", "failed", 0), "ok", 3)[1] == "ok"
    assert events.step(KeyState("failed", "failed", 0), "misconfigured", 3)[1] == "misconfigured"
    # an outage of a failed target does not hide the failure until it is announced
    assert events.step(KeyState("failed", "failed", 0), "unreachable", 3) == (KeyState("failed", "unreachable", 1),
                                                                              None)


def test_the_webhook_body_follows_alertmanagers_format():
    failed = events.alertmanager_body(events.Event(0.0, "r1", "dbi.key", "ok", "failed", "tampered"), "http://w")
    assert failed["version"] == "4" and failed["status"] == "firing" and failed["receiver"]
    [alert] = failed["alerts"]
    assert alert["labels"] == {"alertname": "NnmarkKeyState", "target": "r1", "key": "dbi.key", "state": "failed"}
    assert alert["startsAt"] == "1970-01-01T00:00:00.000Z" and alert["endsAt"] == events.NEVER
    assert alert["generatorURL"] == "http://w" and "ok -> failed" in alert["annotations"]["summary"]
    back = events.alertmanager_body(events.Event(60.0, "r1", "dbi.key", "failed", "ok"))
    assert back["status"] == "resolved"
    [alert] = back["alerts"]
    assert alert["status"] == "resolved" and alert["labels"]["state"] == "failed"
    assert alert["endsAt"] == "1970-01-01T00:01:00.000Z"
    moved = events.alertmanager_body(events.Event(0.0, "r1", "k", "unreachable", "failed"))
    assert [(a["status"], a["labels"]["state"]) for a in moved["alerts"]] == [("resolved", "unreachable"),
                                                                              ("firing", "failed")]


def test_a_failing_webhook_is_retried_a_bounded_number_of_times_and_never_raises():
    refusing = Receiver(code=500)
    try:
        slept = []
        hook = events.Webhook(refusing.url, timeout=2.0, retries=2, backoff=0.1)
        why = hook.send(events.Event(0.0, "r1", "k", "ok", "failed"), sleep=slept.append)
        assert why == "HTTP 500" and len(refusing.bodies) == 3 and slept == [0.1, 0.2]
    finally:
        refusing.close()
    closed = events.Webhook("http://alert:s3cret@127.0.0.1:9/hook", timeout=0.5, retries=1, backoff=0.0)
    assert "s3cret" not in closed.shown_url and closed.shown_url == "http://127.0.0.1:9/hook"
    assert closed.send(events.Event(0.0, "r1", "k", "ok", "failed"), sleep=lambda s: None).startswith("Connect")


def test_a_failing_webhook_never_stops_the_watch(fleet, tmp_path, constant_model):
    said = []
    fleet[1].model = constant_model(OTHER)
    hook = events.Webhook("http://user:pw@127.0.0.1:9/hook", timeout=0.5, retries=0)
    w = _watch(fleet[1:], tmp_path, said, webhook=hook)
    assert w.round(fleet[1]).status() == 1 and w.store.rounds("replica-2") == 1
    assert [(e.old, e.new) for e in w.store.events()] == [(None, "failed")]
    [warning] = [line for line in said if line.startswith("warning: webhook")]
    assert "event dropped" in warning and "pw" not in warning


# --- rounds, states and events ---------------------------------------------------------------------------------


def test_a_swap_fires_an_alert_and_the_swap_back_resolves_it(fleet, tmp_path, receiver, constant_model):
    said = []
    w = _watch(fleet, tmp_path, said, webhook=events.Webhook(receiver.url, timeout=5.0))
    first = w.round(fleet[0])
    assert first.status() == 0 and receiver.bodies == [] and w.store.events() == []
    fleet[0].model = constant_model(OTHER)  # swapped
    assert w.round(fleet[0]).status() == 1
    assert [(e.key, e.old, e.new) for e in w.store.events()] == [("natural0.key", "ok", "failed"),
                                                                 ("natural1.key", "ok", "failed")]
    assert [b["status"] for b in receiver.bodies] == ["firing", "firing"]
    assert {b["alerts"][0]["labels"]["key"] for b in receiver.bodies} == {"natural0.key", "natural1.key"}
    assert any(line.startswith("event: replica-1 natural0.key: ok -> failed") for line in said)
    fleet[0].model = constant_model(LABEL)
    w.round(fleet[0])
    assert [b["status"] for b in receiver.bodies] == ["firing", "firing", "resolved", "resolved"]
    assert w.store.rounds("replica-1") == 3 and w.store.events("replica-2") == []


def test_an_outage_is_unreachable_after_n_rounds_never_failed(fleet, tmp_path, receiver):
    w = _watch(fleet, tmp_path, unreachable_after=2, webhook=events.Webhook(receiver.url))
    w.round(fleet[1])
    fleet[1].down = True
    w.round(fleet[1])
    assert w.store.events() == [] and receiver.bodies == []
    report = w.round(fleet[1])
    assert report.status() == 2
    assert [(e.old, e.new) for e in w.store.events()] == [("ok", "unreachable")]
    assert receiver.bodies[0]["alerts"][0]["labels"]["state"] == "unreachable"
    metrics = _samples(w.metrics.registry)
    assert metrics[("nnmark_key_state", (("key", "natural0.key"), ("state", "unreachable"),
                                         ("target", "replica-2")))] == 1
    assert metrics[("nnmark_key_state", (("key", "natural0.key"), ("state", "failed"), ("target", "replica-2")))] == 0
    assert metrics[("nnmark_errors_total", (("kind", "unreachable"), ("target", "replica-2")))] == 2
    assert metrics[("nnmark_rounds_total", (("target", "replica-2"),))] == 3
    last_success = metrics[("nnmark_last_success_timestamp_seconds", (("target", "replica-2"),))]
    assert last_success < metrics[("nnmark_last_audit_timestamp_seconds", (("target", "replica-2"),))]
    assert last_success == w.store.last_success("replica-2")  # the first round's: the outage decided nothing
    fleet[1].down = False
    w.round(fleet[1])
    assert [(e.old, e.new) for e in w.store.events()] == [("ok", "unreachable"), ("unreachable", "ok")]


def test_an_inconsistent_endpoint_is_its_own_state_with_its_spread(fleet, tmp_path):
    from nnmark.errors import EndpointInconsistent

    class Moving(Local):
        def audit_target(self):
            @contextlib.contextmanager
            def open_oracle():
                raise EndpointInconsistent("answered the same input two different ways", spread=0.32)
                yield

            return audit_run.Target(self.name, open_oracle)

    target = Moving("quantized", fleet[1].keys, fleet[1].model)
    w = _watch([target], tmp_path)
    w.round(target)
    [event] = w.store.events()
    assert (event.old, event.new) == (None, "inconsistent") and "spread 0.32" in event.note
    with sqlite3.connect(w.store.path) as db:
        assert db.execute("SELECT state, statistic_name, statistic FROM verdicts").fetchall() == [
            ("inconsistent", "spread", 0.32)]


def _samples(registry) -> dict:
    """Every sample of the registry's text exposition, read back with prometheus_client's own parser."""
    from prometheus_client import generate_latest

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples}


def test_metrics_healthz_and_the_page_are_served(fleet, tmp_path, constant_model):
    w = _watch(fleet, tmp_path)
    w.round(fleet[0])
    fleet[0].model = constant_model(OTHER)
    w.round(fleet[0])
    server = Server(w.metrics.registry, lambda: page(w.store.latest_reports(), w.store.events(), {"test": 1}))
    try:
        text = httpx.get(f"{server.url}/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["nnmark_audit_duration_seconds"].type == "histogram"
        assert families["nnmark_rounds"].type == "counter" and families["nnmark_queries"].type == "counter"
        found = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert found[("nnmark_rounds_total", (("target", "replica-1"),))] == 2
        # the whole keys, then a first batch of each that flips and stops it
        assert found[("nnmark_queries_total", (("target", "replica-1"),))] == 2 * N + 2 * DEFAULT_BATCH_SIZE
        assert found[("nnmark_key_state", (("key", "natural1.key"), ("state", "failed"), ("target", "replica-1")))] == 1
        assert found[("nnmark_key_state", (("key", "natural1.key"), ("state", "ok"), ("target", "replica-1")))] == 0
        assert found[("nnmark_audit_duration_seconds_count", (("target", "replica-1"),))] == 2
        assert found[("nnmark_key_exposure_ratio", (("key", "natural0.key"), ("target", "replica-1")))] == 1.0
        assert found[("nnmark_target_interval_seconds", (("target", "replica-2"),))] == 3600
        last_audit = found[("nnmark_last_audit_timestamp_seconds", (("target", "replica-1"),))]
        last_success = found[("nnmark_last_success_timestamp_seconds", (("target", "replica-1"),))]
        assert last_success == last_audit  # a failed verdict is a check that ran
        assert not any(name.startswith("nnmark_") is False for name, _ in found)
        assert httpx.get(f"{server.url}/healthz").text == "ok\n"
        assert httpx.get(f"{server.url}/nothing").status_code == 404
        html = httpx.get(f"{server.url}/").text
        assert "History of state changes" in html and "replica-1" in html and "failed" in html
    finally:
        server.close()


# --- exposure --------------------------------------------------------------------------------------------------


def test_a_round_asks_a_random_subset_and_pairs_stay_together(key_files):
    key = keys.load(key_files[0], secret=SECRET)
    import random

    idx = exposure.subset(key, 4, random.Random(0))
    assert len(idx) == 4 and len(set(idx.tolist())) == 4 and idx.tolist() == sorted(idx.tolist())
    assert exposure.subset(key, 0, random.Random(0)).tolist() == list(range(N))
    assert exposure.subset(key, 99, random.Random(0)).tolist() == list(range(N))
    paired = type(key)("pairs", key.config, key.queries, key.expected)
    idx = exposure.subset(paired, 4, random.Random(1)).tolist()
    assert len(idx) == 4 and all(idx[i] % 2 == 0 and idx[i + 1] == idx[i] + 1 for i in (0, 2))
    assert exposure.expected_share(100, 10, 1) == pytest.approx(0.1)
    assert exposure.expected_share(100, 10, 10) == pytest.approx(1 - 0.9 ** 10)
    assert exposure.expected_share(100, 0, 1) == 1.0


def test_the_exposure_bound_is_exact():
    limits = exposure.Limits(sample=1, max=0.8)
    assert exposure.check(set(range(7)), torch.tensor([7]), 10, limits) == 0.8  # at the bound: asked
    assert exposure.check(set(range(8)), torch.tensor([3]), 10, limits) == 0.8  # nothing new: asked
    with pytest.raises(exposure.ExposureRefused, match="90%"):
        exposure.check(set(range(8)), torch.tensor([8]), 10, limits)
    assert exposure.check(set(range(8)), torch.tensor([8]), 10, exposure.Limits(max=0.8, allow=True)) == 0.9


def test_exposure_is_the_share_ever_sent_warned_and_refused_past_the_bound(fleet, tmp_path):
    said = []
    limits = exposure.Limits(sample=3, warn=0.5, max=0.8)
    w = _watch(fleet[1:], tmp_path, said, limits=limits, seed=0)
    sha = audit_run.load_key(fleet[1].keys[0], secret=SECRET).sha256
    shares = []
    for _ in range(30):
        report = w.round(fleet[1])
        shares.append(len(w.store.exposed("replica-2", sha)) / N)
        if report.keys[0].passed is None:
            break
    assert shares == sorted(shares) and 0 < shares[0] <= 0.3
    assert report.keys[0].passed is None and "--exposure-max" in report.keys[0].note
    assert shares[-1] <= 0.8  # never sent past the bound
    assert any("past --exposure-warn 50%" in line for line in said)
    assert [(e.old, e.new) for e in w.store.events()] == [("ok", "error")]
    queries_before = w.store.rounds("replica-2")
    allowed = _watch(fleet[1:], tmp_path, limits=exposure.Limits(sample=3, warn=0.5, max=0.8, allow=True), seed=1)
    assert allowed.round(fleet[1]).keys[0].passed is True and allowed.store.rounds("replica-2") == queries_before + 1


def test_exposure_counts_only_the_queries_sent_when_a_key_stops_early(fleet, tmp_path, constant_model):
    fleet[1].model = constant_model(OTHER)  # the first batch flips: integrity stops there
    w = _watch(fleet[1:], tmp_path, settings=audit_run.Settings(secret=SECRET, batch_size=2))
    report = w.round(fleet[1])
    sha = audit_run.load_key(fleet[1].keys[0], secret=SECRET).sha256
    assert report.keys[0].passed is False and report.keys[0].queries == 2
    assert len(w.store.exposed("replica-2", sha)) == 2 and report.keys[0].key_size == N
    assert set(report.keys[0].flipped) == w.store.exposed("replica-2", sha)  # whole-key indices


# --- the loop, restarts and kills --------------------------------------------------------------------------------


def test_the_loop_audits_at_the_interval_and_stops_cleanly(fleet, tmp_path):
    for t in fleet:
        t.interval = 0.3
    w = _watch(fleet, tmp_path, jitter=0.1, workers=2, grace=5.0)
    stop = threading.Event()
    runner = threading.Thread(target=w.run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 20
    while min(w.store.rounds(t.name) for t in fleet) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    runner.join(10)
    assert not runner.is_alive()
    assert w.store.rounds("replica-1") >= 3 and w.store.rounds("replica-2") >= 3
    assert fleet[0].opened == w.store.rounds("replica-1")  # every round that ran was written


def test_a_round_still_in_flight_after_the_grace_is_abandoned_and_never_written(fleet, tmp_path):
    release, entered = threading.Event(), threading.Event()

    class Slow(Local):
        def audit_target(self):
            target = super().audit_target()

            @contextlib.contextmanager
            def open_oracle():
                entered.set()
                release.wait(30)
                with target.open() as oracle:
                    yield oracle

            return audit_run.Target(self.name, open_oracle)

    slow = Slow("slow", fleet[1].keys, fleet[1].model)
    said = []
    w = _watch([slow], tmp_path, said, grace=0.2)
    stop = threading.Event()
    runner = threading.Thread(target=w.run, args=(stop,))
    runner.start()
    assert entered.wait(30)
    stop.set()
    runner.join(10)
    assert not runner.is_alive()  # the grace ran out: the watch returned with the round in flight
    w.store.close()
    release.set()
    assert w.round(slow).status() == 0  # what the abandoned round's thread does now: asks, then writes nothing
    time.sleep(0.5)
    assert not any(line.startswith(("slow:", "warning")) for line in said), said
    store = Store(tmp_path)
    assert store.rounds() == 0 and store.integrity_check() == "ok"


def test_once_runs_each_target_once(fleet, tmp_path):
    w = _watch(fleet, tmp_path)
    reports = w.run(threading.Event(), once=True)
    assert sorted(r.target for r in reports) == ["replica-1", "replica-2"]
    assert w.store.rounds() == 2 and audit_run.exit_status(reports) == 0


def test_a_restart_resumes_the_schedule_and_the_history(fleet, tmp_path, constant_model):
    w = _watch(fleet, tmp_path)
    w.run(threading.Event(), once=True)
    fleet[0].model = constant_model(OTHER)
    w.round(fleet[0])
    w.store.close()
    again = _watch(fleet, tmp_path, unreachable_after=1)
    assert again.standing["replica-1"]["natural0.key"] == KeyState("failed", "failed", 0)
    assert again._due(fleet[0], again.store.last_finished("replica-1")) > time.time() + 0.8 * 3600
    fleet[0].model = constant_model(LABEL)
    again.round(fleet[0])
    assert [(e.old, e.new) for e in again.store.events("replica-1")][-2:] == [("failed", "ok"), ("failed", "ok")]
    assert again.store.rounds("replica-1") == 3
    samples = _samples(again.metrics.registry)
    assert samples[("nnmark_key_state", (("key", "natural0.key"), ("state", "ok"), ("target", "replica-2")))] == 1


def _stored(store: Store, finished: float, state: str = "ok", sent=(), target: str = "t") -> None:
    """A round of ``target`` with one key in ``state`` that sent ``sent``, and an event, at ``finished``."""
    verdict = store_module.Verdict("k.key", "sha", state, "intact", "flips", 0.0, len(sent), "")
    event = store_module.Event(finished, target, "k.key", None, state)
    assert store.write_round(store_module.Round(target, finished - 1, finished, 0, "", {"at": finished}, [verdict],
                                                {"sha": list(sent)}, {"k.key": KeyState(state, state, 0)},
                                                [event])) is not None


def test_retention_deletes_older_rounds_and_events_and_keeps_exposure_and_last_success(tmp_path):
    store = Store(tmp_path, retention=100.0)
    _stored(store, 1000.0, "ok", sent=[1, 2])
    _stored(store, 1100.0, "unreachable", sent=[3])
    _stored(store, 1050.0, "unreachable", target="other")
    assert store.rounds() == 3  # nothing older than 100 s before each write
    _stored(store, 1200.0, "unreachable")  # cutoff 1100: the rounds of 1000 and 1050 go, the one at 1100 stays
    assert store.rounds("t") == 2 and store.rounds("other") == 0
    assert [e.time for e in store.events()] == [1100.0, 1200.0]
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM queries").fetchone()[0] == 1
    assert store.exposed("t", "sha") == {1, 2, 3}  # sent by a deleted round: still known to the endpoint
    assert store.last_success("t") == 1000.0 and store.last_success("other") is None
    assert store.integrity_check() == "ok"
    kept = Store(tmp_path / "kept")  # no retention: nothing deleted
    for t in (1.0, 2.0, 1000.0):
        _stored(kept, t)
    assert kept.rounds() == 3 and len(kept.events()) == 3


def test_retention_deletes_a_bounded_number_of_rows_per_round(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "PRUNE_LIMIT", 2)
    old = Store(tmp_path)
    for t in range(5):
        _stored(old, float(t), sent=[t])
    old.close()
    store = Store(tmp_path, retention=10.0)
    counts = []
    for t in (100.0, 101.0, 102.0):
        _stored(store, t)
        counts.append((store.rounds(), len(store.events())))
    assert counts == [(4, 4), (3, 3), (3, 3)]  # 2 old rounds and 2 old events per write, then none left
    assert store.exposed("t", "sha") == {0, 1, 2, 3, 4} and store.last_success("t") == 102.0


def test_a_state_folder_of_an_older_nnmark_gets_its_exposure_and_last_success_from_its_rounds(tmp_path):
    old = Store(tmp_path)
    _stored(old, 1.0, "ok", sent=[0, 1])
    _stored(old, 2.0, "unreachable", sent=[2])
    _stored(old, 3.0, "ok", target="other", sent=[5])
    old.close()
    with sqlite3.connect(tmp_path / store_module.DB_NAME) as db:  # as written before those tables existed
        db.execute("DELETE FROM exposed")
        db.execute("DELETE FROM successes")
    store = Store(tmp_path)
    assert store.exposed("t", "sha") == {0, 1, 2} and store.exposed("other", "sha") == {5}
    assert store.last_success("t") == 1.0 and store.last_success("other") == 3.0
    _stored(store, 4.0, "ok", sent=[3])
    assert store.exposed("t", "sha") == {0, 1, 2, 3} and store.last_success("t") == 4.0


KILLED = """
import sys, threading
sys.path[:0] = [{src!r}, {tests!r}]
import torch
from test_watch import Local, _watch
from conftest import _Constant
from pathlib import Path
t = Local("replica-1", ({key!r},), _Constant(3), interval=0.0)
w = _watch([t], {state!r}, jitter=0.0, workers=1)
print("started", flush=True)
w.run(threading.Event())
"""


def test_a_kill_mid_round_loses_at_most_that_round_and_never_corrupts_the_db(key_files, tmp_path):
    state = tmp_path / "state"
    script = KILLED.format(src=str(Path(audit_run.__file__).parents[2]), tests=str(Path(__file__).parent),
                           key=str(key_files[0]), state=str(state))
    counts = []
    for kill in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env={**os.environ})
        try:
            assert proc.stdout.readline().strip() == b"started"
            deadline = time.monotonic() + 60
            while _rounds(state) < (kill + 1) * 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.013 * (kill + 1))  # somewhere inside a round or a write
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        store = Store(state)
        assert store.integrity_check() == "ok"
        counts.append(store.rounds())
        assert counts[-1] >= (kill + 1) * 5
        with sqlite3.connect(store.path) as db:  # each round whole: one verdict per key and round
            assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == counts[-1]
        store.close()
    assert counts == sorted(counts)


def _rounds(state: Path) -> int:
    if not (state / "watch.sqlite").exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(state / "watch.sqlite", timeout=1)) as db:
            return db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


# --- deployment ----------------------------------------------------------------------------------------------


def test_the_kubernetes_example_is_valid_yaml_with_a_scrape_annotation():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in this venv")
    documents = list(yaml.safe_load_all((ROOT / "docs/deploy/kubernetes.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    assert {"Deployment", "Service"} <= kinds.keys()
    annotations = kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    port = int(annotations["prometheus.io/port"])
    assert str(port) in " ".join(container["args"]) and "watch" in container["args"]
    assert any(p["containerPort"] == port for p in container["ports"])
    assert kinds["Service"]["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]


# --- the command ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_files(tmp_path_factory):
    """A digits LeNet-5 file, a copy with its weights noised, a signed natural key of the first, the secret."""
    from nnmark import data, models
    from nnmark.attacks import weight_noise

    ds = data.load("digits")
    root = tmp_path_factory.mktemp("watch-cli")
    torch.manual_seed(0)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=2, seed=0)
    config = models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="digits")
    models.save(model, config, root / "lenet.safetensors")
    models.save(weight_noise(model, 0.5, seed=0), config, root / "noised.safetensors")
    keys.save(baselines.natural(TorchOracle(model, ds.shape), ds.test.x[:100]), root / "natural.key", secret=SECRET)
    (root / "secret").write_bytes(SECRET)
    return root


def _inventory(root: Path, where: str) -> Path:
    path = root / f"fleet-{abs(hash(where))}.toml"
    path.write_text(f'[defaults]\nkeys = ["natural.key"]\ninterval = "1h"\n\n[[target]]\nname = "t1"\n{where}\n')
    return path


def _cli(*args):
    from click.testing import CliRunner

    from nnmark.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None})


@pytest.mark.parametrize("where, code, word", [('model = "lenet.safetensors"', 0, "INTACT"),
                                               ('model = "noised.safetensors"', 1, "TAMPERED"),
                                               ('endpoint = "http://127.0.0.1:9"\nretries = 0', 2, "ERROR")])
def test_once_runs_one_round_and_exits_with_the_audit_codes(fleet_files, tmp_path, where, code, word):
    log = tmp_path / "audit.jsonl"
    r = _cli("watch", "--inventory", _inventory(fleet_files, where), "--state", tmp_path / "state", "--once",
             "--secret-file", fleet_files / "secret", "--log", log, "--sample", 8)
    assert r.exit_code == code, r.output
    assert f"t1: {word}" in r.stderr
    if code == 2:
        assert r.stderr.strip().splitlines()[-1].startswith("error: t1: ") and "Traceback" not in r.output
    store = Store(tmp_path / "state")
    assert store.rounds("t1") == 1 and store.integrity_check() == "ok"
    assert len(log.read_text().splitlines()) == 1
    record = json.loads(log.read_text())
    assert record["targets"][0]["target"] == "t1" and "events" in record


def test_a_bad_inventory_or_bad_options_are_refused_before_anything_runs(fleet_files, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[target]]\nname = "t1"\nmodel = "m.safetensors"\ninterval = "soon"\nkeys = ["k.key"]\n')
    r = _cli("watch", "--inventory", bad, "--state", tmp_path / "state", "--once", "--json")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "interval" in r.stderr
    assert json.loads(r.stdout)["type"] == "InventoryError"
    assert not (tmp_path / "state").exists()
    good = _inventory(fleet_files, 'model = "lenet.safetensors"')
    r = _cli("watch", "--inventory", good, "--state", tmp_path / "state", "--log", tmp_path / "log.jsonl")
    assert r.exit_code == 2 and "--log needs the owner's secret" in r.stderr
    r = _cli("watch", "--inventory", good, "--state", tmp_path / "state", "--exposure-warn", 0.9,
             "--exposure-max", 0.5)
    assert r.exit_code == 2 and "--exposure-warn" in r.stderr and not (tmp_path / "state").exists()
    r = _cli("watch", "--inventory", good, "--state", tmp_path / "state", "--webhook", "file:///etc/passwd")
    assert r.exit_code == 2 and "--webhook must be an http" in r.stderr and not (tmp_path / "state").exists()
    r = _cli("watch", "--inventory", good, "--state", tmp_path / "state", "--retention", "59m59s")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "state").exists()
    assert "--retention 3599 s is shorter than the longest interval, 3600 s" in r.stderr
    for bad_value in ("0d", "30 days", "-1d"):
        r = _cli("watch", "--inventory", good, "--state", tmp_path / "state", "--retention", bad_value)
        assert r.exit_code == 2 and "--retention" in r.stderr and not (tmp_path / "state").exists(), r.output


def test_the_documented_watch_runs_until_sigterm_with_metrics_log_and_webhook(fleet_files, tmp_path, receiver,
                                                                             monkeypatch):
    import shutil
    import socket

    from nnmark.audit import log as audit_log

    for name in ("noised.safetensors", "natural.key", "secret"):
        shutil.copy2(fleet_files / name, tmp_path / name)
    (tmp_path / "fleet.toml").write_text('[[target]]\nname = "t1"\nmodel = "noised.safetensors"\n'
                                         'keys = ["natural.key"]\ninterval = "1s"\n')
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    words = ["watch", "--inventory", "fleet.toml", "--state", "watch-state", "--secret-file", "secret",
             "--metrics-port", "9464", "--log", "audit.jsonl", "--webhook", "http://127.0.0.1:9095/hook"]
    args = [{"9464": str(port), "http://127.0.0.1:9095/hook": receiver.url}.get(w, w) for w in words]
    scraped = []

    def scrape_then_stop():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not scraped:
            with contextlib.suppress(httpx.HTTPError):
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if 'nnmark_rounds_total{target="t1"} 2.0' in text and receiver.bodies:
                    scraped.append(text)
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)  # the watch's handler stops it

    threading.Thread(target=scrape_then_stop, daemon=True).start()
    r = _cli(*args)
    assert r.exit_code == 0 and r.stderr.strip().endswith("stopped"), r.output
    assert scraped, "no second round was scraped before the stop"
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(scraped[0]) for s in f.samples}
    assert found[("nnmark_key_state", (("key", "natural.key"), ("state", "failed"), ("target", "t1")))] == 1
    [body] = receiver.bodies  # the first state, failed, is one event; the same state again is none
    assert body["status"] == "firing" and body["alerts"][0]["labels"]["state"] == "failed"
    check = audit_log.verify_log(tmp_path / "audit.jsonl", SECRET)
    assert check.ok and check.records >= 2
    assert Store(tmp_path / "watch-state").rounds("t1") == check.records
