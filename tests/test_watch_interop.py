"""nnmark watch with real parts: `nnmark serve` replicas and the `nnmark watch` command as processes, a webhook
receiver, a Prometheus server that scrapes the watch, and the page read back from headless Chromium.

The story, in file order: the watch audits a live replica (ok); Prometheus scrapes it and answers a query for
``nnmark_key_state``; Chromium renders its page; the replica's model is swapped for a fine-tuned copy (the
webhook gets a firing alert), swapped back (resolved), killed (``unreachable`` after ``UNREACHABLE_AFTER``
rounds, never ``failed``); the watch is stopped by SIGTERM and started again, and resumes its history.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from nnmark import keys, models
from nnmark.attacks import finetune
from nnmark.marks.integrity import dbi
from nnmark.oracles import TorchOracle
from ports import free_port
from test_watch import Receiver

pytestmark = pytest.mark.interop
SECRET = b"watch interop secret"
HOST = "127.0.0.1"
INTERVAL = 1.0
UNREACHABLE_AFTER = 20
"""Rounds (about seconds) of outage before it is announced: more than a replica's restart takes."""
STARTUP = 120.0
SRC = str(Path(models.__file__).resolve().parents[2])


def _until(check, timeout: float, what: str, step: float = 0.2):
    """Poll ``check()`` until it returns something true, at most ``timeout`` seconds; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _nnmark(*args, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "NNMARK_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "nnmark", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=log.open("ab"), env=env)


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


class Replica:
    """`nnmark serve` of a model file on a fixed port, restartable with another model."""

    def __init__(self, port: int, log: Path):
        self.port, self.log, self.proc = port, log, None

    def start(self, model: Path) -> None:
        self.proc = _nnmark("serve", "--model", model, "--port", self.port, log=self.log)
        _until(lambda: self._ready(), STARTUP, "nnmark serve")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"http://{HOST}:{self.port}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)


@pytest.fixture(scope="module")
def world(tmp_path_factory, lenet, mnist):
    """A LeNet-5 file and a fine-tuned copy, a DBI key of it, an inventory of one replica, a receiver."""
    root = tmp_path_factory.mktemp("watch-interop")
    config = models.ModelConfig("lenet5", mnist.shape, mnist.num_classes, data="mnist5k")
    models.save(lenet, config, root / "lenet.safetensors")
    tuned = finetune(lenet, mnist.train.x[:512], mnist.train.y[:512], lr=1e-3, steps=100, seed=0)
    models.save(tuned, config, root / "tuned.safetensors")
    key = dbi.create(TorchOracle(lenet, mnist.shape), mnist.test.x[:30], itr=300, eps=1e-3)
    keys.save(key, root / "dbi.key", secret=SECRET)
    (root / "secret").write_bytes(SECRET)
    port = free_port()
    (root / "fleet.toml").write_text(f'[[target]]\nname = "replica-1"\nendpoint = "http://{HOST}:{port}"\n'
                                     f'keys = ["dbi.key"]\ninterval = {INTERVAL}\ntimeout = 2\nretries = 0\n')
    replica = Replica(port, root / "serve.log")
    receiver = Receiver()
    w = {"root": root, "replica": replica, "receiver": receiver, "metrics": free_port(), "watch": None}
    replica.start(root / "lenet.safetensors")
    w["watch"] = _watch(w)
    yield w
    for proc in (w["watch"],):
        if proc is not None:
            _stop(proc)
    replica.kill()
    receiver.close()


def _watch(w, *extra) -> subprocess.Popen:
    root = w["root"]
    return _nnmark("watch", "--inventory", root / "fleet.toml", "--state", root / "state", "--secret-file",
                   root / "secret", "--log", root / "audit.jsonl", "--metrics-port", w["metrics"], "--webhook",
                   w["receiver"].url, "--unreachable-after", UNREACHABLE_AFTER, "--sample", 0, "--allow-exposure",
                   "--jitter", 0,
                   *extra, log=root / "watch.log")


def _verdicts(w) -> list[str]:
    """The states of every round so far, oldest first (read-only)."""
    path = w["root"] / "state" / "watch.sqlite"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return [s for (s,) in db.execute("SELECT state FROM verdicts ORDER BY round_id")]
        except sqlite3.OperationalError:
            return []


def _rounds_after(w, n: int, timeout: float = 60.0) -> list[str]:
    return _until(lambda: (v := _verdicts(w)) and len(v) >= n and v, timeout, f"{n} rounds")


def test_a_live_replica_is_ok_and_served_as_metrics(world):
    states = _rounds_after(world, 2, STARTUP)
    assert set(states) == {"ok"}, (world["root"] / "watch.log").read_text()
    text = httpx.get(f"http://{HOST}:{world['metrics']}/metrics").text
    assert 'nnmark_key_state{key="dbi.key",state="ok",target="replica-1"} 1.0' in text


def test_prometheus_scrapes_the_watch_and_answers_for_nnmark_metrics(world, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (Debian's prometheus package; make test installs it where apt is)")
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                                  "scrape_configs": [{"job_name": "nnmark-watch", "static_configs": [
                                      {"targets": [f"{HOST}:{world['metrics']}"]}]}]}))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address={HOST}:{port}"], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "prometheus.log").open("wb"))
    try:
        def query(q):
            try:
                answer = httpx.get(f"http://{HOST}:{port}/api/v1/query", params={"query": q}, timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return None
            return answer["data"]["result"] if answer.get("status") == "success" else None

        ok = _until(lambda: query('nnmark_key_state{state="ok"} == 1'), 60, "Prometheus to scrape the watch", 0.5)
        assert ok[0]["metric"]["target"] == "replica-1" and ok[0]["metric"]["key"] == "dbi.key"
        rounds = _until(lambda: query("nnmark_rounds_total"), 30, "nnmark_rounds_total", 0.5)
        assert float(rounds[0]["value"][1]) >= 1
        assert _until(lambda: query("nnmark_audit_duration_seconds_count"), 30, "the duration histogram", 0.5)
        up = query('up{job="nnmark-watch"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        _stop(proc)


def test_the_page_renders_in_headless_chromium(world, tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium binary (make test installs Debian's chromium where apt is)")
    dom = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          f"http://{HOST}:{world['metrics']}/"], capture_output=True, text=True, timeout=120).stdout
    assert '<table class="fleet">' in dom and '<td class="state state-ok">ok</td>' in dom  # the fleet table
    assert ">replica-1</a></th>" in dom and "History of state changes" in dom
    assert 'class="summary pass"' in dom and "INTACT" in dom


def test_a_swap_alerts_the_webhook_an_outage_is_unreachable_and_a_restart_resumes(world):
    replica, receiver = world["replica"], world["receiver"]
    assert receiver.bodies == []
    replica.kill()
    replica.start(world["root"] / "tuned.safetensors")  # the model swapped for a fine-tuned copy
    firing = _until(lambda: [b for b in receiver.bodies if b["status"] == "firing"], 60, "the alert")
    assert firing[0]["version"] == "4"
    assert firing[0]["alerts"][-1]["labels"] == {"alertname": "NnmarkKeyState", "target": "replica-1",
                                                 "key": "dbi.key", "state": "failed"}
    replica.kill()
    replica.start(world["root"] / "lenet.safetensors")
    _until(lambda: any(b["status"] == "resolved" for b in receiver.bodies), 60, "the resolved alert")
    before = len(_verdicts(world))
    replica.kill()  # an outage
    states = _until(lambda: (v := _verdicts(world)) and v[before:].count("unreachable") >= UNREACHABLE_AFTER and v, 120,
                    "unreachable rounds")
    assert "failed" not in states[before:] and "error" not in states[before:]
    outage = _until(lambda: [b for b in receiver.bodies if b["alerts"][-1]["labels"]["state"] == "unreachable"],
                    30, "the unreachable alert")
    assert outage[0]["status"] == "firing"
    assert _stop(world["watch"]) == 0
    assert "stopped" in (world["root"] / "watch.log").read_text()
    with contextlib.closing(sqlite3.connect(world["root"] / "state" / "watch.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        history = db.execute("SELECT old, new FROM events ORDER BY id").fetchall()
    assert history[:3] == [("ok", "failed"), ("failed", "ok"), ("ok", "unreachable")]
    replica.start(world["root"] / "lenet.safetensors")
    again = _watch(world, "--once")
    assert again.wait(STARTUP) == 0, (world["root"] / "watch.log").read_text()
    world["watch"] = None
    with contextlib.closing(sqlite3.connect(world["root"] / "state" / "watch.sqlite")) as db:
        resumed = db.execute("SELECT old, new FROM events ORDER BY id").fetchall()
    assert resumed == [*history, ("unreachable", "ok")]  # the restarted watch knew the announced state
    log = subprocess.run([sys.executable, "-m", "nnmark", "log", "verify", world["root"] / "audit.jsonl",
                          "--secret-file", world["root"] / "secret"], env={**os.environ, "PYTHONPATH": SRC},
                         capture_output=True, text=True)
    assert log.returncode == 0 and "OK:" in log.stdout
