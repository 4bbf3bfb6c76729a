"""``nnmark bench watch``: what ``nnmark watch`` costs and how fast it tells, against `nnmark serve` replicas.

One digits LeNet-5 (and a fine-tuned copy of it) and four signed keys of it: DBI, natural samples, uniform noise
(integrity) and IPGuard (ownership). Replicas are `nnmark serve` apps, each on its own port, served from threads of
this process (a replica restarts in milliseconds: its server stops and a new one binds the same port); the watch is
the ``nnmark watch`` command in its own process, whose CPU time and peak memory are read from /proc.

- load: ``targets`` replicas x 4 keys at ``interval`` seconds for ``seconds``: the watch's CPU (share of one core)
  and peak RSS, rounds, audit duration, queries per round, and from those the queries per target per day;
- swap: one replica's model replaced by the fine-tuned copy; the time from the swap to the webhook's alert
  (goal: at most one interval plus one audit);
- outage: ``cycles`` stop/restart cycles of a replica (down and up for random spells) under a watch at a 1 s
  interval; ``failed`` events counted (goal 0), with the ``unreachable`` ones beside;
- idle: the watch's CPU between rounds, an hour-long interval after its first round (goal < 5% of one core);
- exposure: the share of a 100-query key an endpoint that logs every request has seen after 1, 10 and 100 rounds
  of ``sample`` random queries (simulated with the watch's own draw, beside the closed form).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from nnmark import data, envs, keys, models
from nnmark.attacks import finetune
from nnmark.bench.common import document, header, parameters, section, table, write
from nnmark.marks.integrity import baselines, dbi
from nnmark.marks.ownership import ipguard
from nnmark.oracles import TorchOracle
from nnmark.serve import create_app, serving
from nnmark.watch import exposure, watcher

STEM = "watch"
SECRET = b"nnmark-bench-watch-secret"
HOST = "127.0.0.1"
FULL = {"seeds": 1, "targets": 10, "interval": 10.0, "seconds": 180.0, "cycles": 50, "idle_seconds": 30.0,
        "sample": 16, "key_n": 30, "exposure_n": 100, "exposure_samples": (8, 16, 32), "exposure_draws": 200}
QUICK = {"seeds": 1, "targets": 2, "interval": 3.0, "seconds": 4.0, "cycles": 2, "idle_seconds": 2.0,
         "sample": 16, "key_n": 20, "exposure_n": 100, "exposure_samples": (8, 32), "exposure_draws": 20}
ROUNDS = (1, 10, 100)
UNREACHABLE_AFTER = 3
DAY = 86400.0
DAILY_INTERVALS = (60.0, 300.0, 3600.0)
"""Intervals whose queries per target per day are reported."""


# --- parts -------------------------------------------------------------------------------------------------


def _fixture(root: Path, p: dict) -> tuple[Path, Path, list[Path]]:
    """The model file, its fine-tuned copy and four signed keys in ``root``."""
    ds = data.load("digits")
    torch.manual_seed(0)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=4, seed=0)
    config = models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="digits")
    source, tuned = root / "lenet.safetensors", root / "tuned.safetensors"
    models.save(model, config, source)
    models.save(finetune(model, ds.train.x[:256], ds.train.y[:256], lr=1e-2, steps=50, seed=0), config, tuned)
    oracle, n, x = TorchOracle(model, ds.shape), p["key_n"], ds.test.x
    made = {"dbi": dbi.create(oracle, x[:n], itr=300, eps=1e-3), "natural": baselines.natural(oracle, x[n:2 * n]),
            "noise": baselines.random_noise(oracle, n, seed=0),
            "ipguard": ipguard.create(oracle, ds.train.x[: 2 * n], n=n, seed=0)}
    paths = []
    for name, key in made.items():
        paths.append(root / f"{name}.key")
        keys.save(key, paths[-1], secret=SECRET)
    (root / "secret").write_bytes(SECRET)
    return source, tuned, paths


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Replica:
    """An `nnmark serve` app of a model file on a fixed port, in a thread of this process; restartable."""

    def __init__(self, port: int):
        self.port = port
        self._stack: contextlib.ExitStack | None = None

    def start(self, path: Path) -> None:
        model, config = models.load(path)
        app = create_app(envs.get("float32").oracle(model, tuple(config.input_shape)), model_name="model")
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(serving(app, HOST, self.port))

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


class Receiver:
    """A webhook receiver that keeps (arrival time, body) of each POST."""

    def __init__(self):
        self.received: list[tuple[float, dict]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                received.append((time.time(), json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _inventory(root: Path, name: str, ports: list[int], interval: float, key_paths: list[Path]) -> Path:
    keys_toml = json.dumps([str(k) for k in key_paths])
    targets = "".join(f'[[target]]\nname = "replica-{i}"\nendpoint = "http://{HOST}:{port}"\n' for i, port in
                      enumerate(ports))
    path = root / f"{name}.toml"
    path.write_text(f"[defaults]\nkeys = {keys_toml}\ninterval = {interval}\ntimeout = 5\nretries = 0\n\n{targets}")
    return path


class Watch:
    """``nnmark watch`` as a process; its CPU seconds and peak RSS from /proc."""

    def __init__(self, root: Path, inventory: Path, state: str, webhook: str, sample: int, jitter: float):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NNMARK_PROGRESS": "0",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH",
                                                                                                       "")])}
        self.state = root / state
        self.log = root / f"{state}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nnmark", "watch", "--inventory", str(inventory), "--state", str(self.state),
             "--secret-file", str(root / "secret"), "--webhook", webhook, "--sample", str(sample), "--allow-exposure",
             "--unreachable-after", str(UNREACHABLE_AFTER), "--jitter", str(jitter)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=env)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def query(self, sql: str) -> list[tuple]:
        path = self.state / "watch.sqlite"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            try:
                return db.execute(sql).fetchall()
            except sqlite3.OperationalError:
                return []

    def rounds(self) -> int:
        rows = self.query("SELECT COUNT(*) FROM rounds")
        return rows[0][0] if rows else 0

    def wait_rounds(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.rounds() < n:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"watch: fewer than {n} rounds: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- measurements ----------------------------------------------------------------------------------------------


def _wait_alert(receiver: Receiver, since: float, state: str, timeout: float) -> float | None:
    """The arrival time of the first firing alert for ``state`` after ``since``, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, body in list(receiver.received):
            if t >= since and any(a["status"] == "firing" and a["labels"]["state"] == state for a in body["alerts"]):
                return t
        time.sleep(0.05)
    return None


@contextlib.contextmanager
def _watched(root: Path, name: str, fx, p: dict, receiver: Receiver, *, targets: int, interval: float,
             jitter: float = watcher.DEFAULT_JITTER) -> Iterator[tuple[list[Replica], Watch]]:
    """``targets`` replicas of the model under a watch at ``interval`` and ``jitter`` (state ``name``), once every
    target was asked (started and warmed up); the watch and the replicas stopped on exit."""
    source, _, key_paths = fx
    with contextlib.ExitStack() as stack:
        replicas = []
        for _ in range(targets):
            replicas.append(Replica(_port()))
            stack.callback(replicas[-1].stop)
            replicas[-1].start(source)
        watch = Watch(root, _inventory(root, name, [r.port for r in replicas], interval, key_paths), name,
                      receiver.url, p["sample"], jitter)
        stack.callback(watch.stop)
        watch.wait_rounds(targets, 180)
        yield replicas, watch


def measure_load(root: Path, fx, p: dict, receiver: Receiver) -> dict:
    """CPU, memory, rounds and queries of a watch over ``targets`` replicas; then a swap and its alert."""
    tuned = fx[1]
    with _watched(root, "load", fx, p, receiver, targets=p["targets"], interval=p["interval"]) as (replicas, watch):
        cpu0, t0 = watch.cpu_seconds(), time.monotonic()
        time.sleep(p["seconds"])
        cpu = (watch.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        rss = watch.peak_rss_mib()
        rows = watch.query("SELECT duration_s, queries FROM rounds")
        replicas[0].stop()
        swapped = time.time()
        replicas[0].start(tuned)
        alert = _wait_alert(receiver, swapped, "failed", 3 * p["interval"] + 60)
    durations = [d for d, _ in rows]
    queries = statistics.mean(q for _, q in rows)
    return {"cpu_share": cpu, "peak_rss_mib": rss, "rounds": len(rows),
            "duration_median_s": statistics.median(durations), "duration_max_s": max(durations),
            "queries_per_round": queries,
            "queries_per_day": {str(int(i)): queries * DAY / i for i in (p["interval"], *DAILY_INTERVALS)},
            "swap_to_alert_s": None if alert is None else alert - swapped,
            "alert_bound_s": p["interval"] * 1.1 + max(durations)}


def measure_outage(root: Path, fx, p: dict, receiver: Receiver) -> dict:
    """Stop/restart cycles of one replica under a 1 s watch: events by state."""
    source, rng = fx[0], random.Random(0)
    with _watched(root, "outage", fx, p, receiver, targets=1, interval=1.0) as ((replica,), watch):
        for _ in range(p["cycles"]):
            replica.stop()
            time.sleep(rng.uniform(0.2, 4.0))  # down: often shorter, sometimes longer than UNREACHABLE_AFTER rounds
            replica.start(source)
            time.sleep(rng.uniform(1.0, 3.0))
        time.sleep(3.0)
        states = watch.query("SELECT state, COUNT(*) FROM verdicts GROUP BY state")
        events = watch.query("SELECT new, COUNT(*) FROM events GROUP BY new")
    return {"cycles": p["cycles"], "rounds_by_state": dict(states), "events_by_state": dict(events),
            "failed_events": dict(events).get("failed", 0)}


def measure_idle(root: Path, fx, p: dict, receiver: Receiver) -> dict:
    """The watch's CPU share between rounds: an hour's interval, after its first round."""
    # no jitter: a first round is due at once, not up to 10 s later (the spread of an hour's interval's jitter)
    with _watched(root, "idle", fx, p, receiver, targets=1, interval=3600.0, jitter=0.0) as (_, watch):
        time.sleep(1.0)
        cpu0, t0 = watch.cpu_seconds(), time.monotonic()
        time.sleep(p["idle_seconds"])
        share = (watch.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    return {"cpu_share": share, "seconds": p["idle_seconds"]}


def measure_exposure(p: dict) -> list[dict]:
    """Distinct queries of an n-query key drawn by the watch's subset after 1, 10 and 100 rounds (mean over draws)."""
    n = p["exposure_n"]
    key = keys.KeyFile("natural", {}, torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long))
    rows = []
    for k in p["exposure_samples"]:
        seen = {r: [] for r in ROUNDS}
        for draw in range(p["exposure_draws"]):
            rng, sent = random.Random(draw), set()
            for r in range(1, max(ROUNDS) + 1):
                sent |= set(exposure.subset(key, k, rng).tolist())
                if r in seen:
                    seen[r].append(len(sent) / n)
        rows.append({"sample": k, "n": n, **{str(r): statistics.mean(seen[r]) for r in ROUNDS},
                     **{f"expected_{r}": exposure.expected_share(n, k, r) for r in ROUNDS}})
    return rows


# --- report ----------------------------------------------------------------------------------------------------


def render(result: dict) -> str:
    load, outage, idle, p = result["load"], result["outage"], result["idle"], result["params"]
    swap = load["swap_to_alert_s"]
    swap_cell = "no alert" if swap is None else f"{swap:.1f}"
    daily = [[f"{float(i):g}", f"{q:,.0f}"] for i, q in load["queries_per_day"].items()]
    exposure_rows = [[e["sample"], e["n"], *(f"{e[str(r)]:.0%} ({e[f'expected_{r}']:.0%})" for r in ROUNDS)]
                     for e in result["exposure"]]
    return document(
        "# nnmark watch",
        f"`{result['command']}` on {result['date']}. {result['machine']}",
        section("Load", f"{p['targets']} `nnmark serve` replicas x 4 keys (DBI, natural, noise: integrity; IPGuard: "
                f"ownership), interval {p['interval']:g} s, {p['sample']} random queries per key per round, measured "
                f"for {p['seconds']:g} s after every target was asked once.",
                table(["watch CPU (share of one core)", "peak RSS (MiB)", "rounds", "audit median (s)",
                       "audit max (s)", "queries per round"],
                      [[f"{load['cpu_share']:.1%}", f"{load['peak_rss_mib']:.0f}", load["rounds"],
                        f"{load['duration_median_s']:.2f}", f"{load['duration_max_s']:.2f}",
                        f"{load['queries_per_round']:.0f}"]], "rrrrrr")),
        section("Swap to alert", "One replica's model replaced by a fine-tuned copy (its server restarted on the same "
                "port); seconds until the webhook got the firing `failed` alert. Goal: at most one interval (with "
                "its jitter) plus one audit.",
                table(["swap to alert (s)", "bound: interval x 1.1 + slowest audit (s)", "within"],
                      [[swap_cell, f"{load['alert_bound_s']:.1f}",
                        "yes" if swap is not None and swap <= load["alert_bound_s"] else "NO"]], "rrl")),
        section("Queries per target per day", "At the rate measured above (queries per round), for a few intervals.",
                table(["interval (s)", "queries per target per day"], daily, "rr")),
        section("Outage", f"{outage['cycles']} cycles: the replica's server stopped for 0.2-4 s and started again "
                f"(same model), under a watch at a 1 s interval announcing `unreachable` after {UNREACHABLE_AFTER} "
                "rounds. Goal: 0 `failed` events.",
                table(["failed events", "events by state", "rounds by state"],
                      [[outage["failed_events"], json.dumps(outage["events_by_state"]),
                        json.dumps(outage["rounds_by_state"])]], "rll")),
        section("Idle", "The watch's CPU between rounds (interval 1 h, after its first round). Goal: under 5% of "
                "a core.",
                table(["CPU (share of one core)", "measured over (s)", "under 5%"],
                      [[f"{idle['cpu_share']:.2%}", f"{idle['seconds']:g}", "yes" if idle["cpu_share"] < 0.05 else
                        "NO"]], "rrl")),
        section("Key exposure", "Share of a key's distinct queries an endpoint that logs every request has seen after "
                "N rounds of k random queries each (the watch's own draw; the closed form 1 - (1 - k/n)^N in "
                "brackets). The sequential audit stops a key early when it decides, so fewer are sent on a "
                "tampered model; an intact integrity key asks its whole subset.",
                table(["k per round", "key size n", *(f"after {r} round{'s' if r > 1 else ''}" for r in ROUNDS)],
                      exposure_rows, "rr")),
    )


def run(*, quick: bool = False, seeds: int | None = None, out_dir: str | Path = "docs/benchmarks",
        progress: bool = False) -> Path:
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    with tempfile.TemporaryDirectory(prefix="nnmark-bench-watch-") as tmp:
        root = Path(tmp)
        fx = _fixture(root, p)
        receiver = Receiver()
        try:
            load = measure_load(root, fx, p, receiver)
            outage = measure_outage(root, fx, p, receiver)
            idle = measure_idle(root, fx, p, receiver)
        finally:
            receiver.close()
    result = {**header(STEM, p, quick=quick, seeds=seeds), "machine": f"{os.cpu_count()} CPUs (shared).",
              "load": load, "outage": outage, "idle": idle, "exposure": measure_exposure(p)}
    return write(out_dir, STEM, result, render(result))
