"""Start and stop real inference servers (MLServer, KServe, ``nnmark serve``) as subprocesses on 127.0.0.1:
free ports, their own process group, readiness polled within ``STARTUP_TIMEOUT``, SIGTERM then SIGKILL after
``STOP_TIMEOUT``. Used by the interop tests' fixtures (``conftest.py``) and by ``nnmark bench endpoints``; it
imports no pytest, and a server that does not come up raises ``ServerNotReady`` with the tail of its log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx

import shapes
from nnmark import models

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENVS = ROOT / ".interop"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 180.0
POLL_INTERVAL = 0.25
PROBE_TIMEOUT = 2.0
STOP_TIMEOUT = 15.0
LOG_TAIL_BYTES = 3000


class ServerNotReady(RuntimeError):
    """A server exited or did not answer ready in time; the message ends with its log's tail."""


@dataclasses.dataclass(frozen=True)
class Server:
    """A running server: its REST base URL, its gRPC address (host:port) and the names of its models."""

    kind: str
    url: str
    grpc: str
    models: tuple[str, ...]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env(home: Path) -> dict[str, str]:
    """The server's environment: this checkout's nnmark and ``shapes`` first, caches in ``home``, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), MPLCONFIGDIR=str(home / "mpl"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(HERE)]), OMP_NUM_THREADS="1")
    return env


def _log_tail(log: Path) -> str:
    return log.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")


def wait_ready(process: subprocess.Popen, url: str, names: list[str], log: Path) -> None:
    """Poll the server's and every model's readiness, bounded in count and time; ``ServerNotReady`` with the
    log's tail."""
    routes = ["/v2/health/ready", *(f"/v2/models/{name}/ready" for name in names)]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(base_url=url, timeout=PROBE_TIMEOUT) as client:
        for _ in range(int(STARTUP_TIMEOUT / POLL_INTERVAL)):
            if process.poll() is not None:
                raise ServerNotReady(f"server exited with {process.returncode} before it was ready:\n{_log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                while routes and client.get(routes[0]).status_code == 200:
                    routes.pop(0)
            if not routes or time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
    if routes:
        raise ServerNotReady(f"server not ready after {STARTUP_TIMEOUT:g} s ({routes[0]}):\n{_log_tail(log)}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``STOP_TIMEOUT``; nothing of it is left running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the leader if it hung, and any child it left behind
    process.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def running(kind: str, argv: list[str], env: dict[str, str], names: list[str], http_port: int, grpc_port: int,
            workdir: Path) -> Iterator[Server]:
    """Start ``argv`` in its own process group, wait until it and every model in ``names`` are ready, stop it after."""
    log = workdir / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://{HOST}:{http_port}"
        wait_ready(process, url, names, log)
        yield Server(kind, url, f"{HOST}:{grpc_port}", tuple(names))
    finally:
        stop(process)


def write_model_settings(root: Path, entries: list[dict], chw: tuple[int, int, int], classes: int) -> None:
    """One MLServer model folder per entry, each with its model-settings.json."""
    for e in entries:
        inputs, outputs = shapes.metadata(shapes.SHAPES[e["shape"]], chw, classes)
        settings = {"name": e["name"], "implementation": "mlserver_runtime.NnmarkRuntime",
                    "parameters": {"uri": e["checkpoint"], "extra": {"shape": e["shape"], "dtype": e["dtype"]}},
                    "inputs": inputs, "outputs": outputs}
        folder = root / e["name"]
        folder.mkdir(parents=True)
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=1))


def server_command(kind: str, python: str | Path, entries: list[dict], workdir: Path,
                   ports: tuple[int, int]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start ``kind`` ("mlserver" or "kserve") with ``python`` (its
    virtualenv's), serving ``entries`` ({name, checkpoint, shape, dtype}: ``shapes.served_models``) on the HTTP
    and gRPC ``ports``; the servers' settings are written under ``workdir``."""
    env = server_env(workdir)
    if kind == "mlserver":
        config = models.load(entries[0]["checkpoint"])[1]
        write_model_settings(workdir / "models", entries, tuple(config.input_shape), config.num_classes)
        env.update(MLSERVER_HOST=HOST, MLSERVER_HTTP_PORT=str(ports[0]), MLSERVER_GRPC_PORT=str(ports[1]),
                   MLSERVER_METRICS_ENDPOINT="", MLSERVER_PARALLEL_WORKERS="0")
        return [str(python), "-m", "mlserver.cli.main", "start", str(workdir / "models")], env
    (workdir / "models.json").write_text(json.dumps(entries))
    return [str(python), str(HERE / "kserve_model.py"), "--models", str(workdir / "models.json"),
            "--http_port", str(ports[0]), "--grpc_port", str(ports[1])], env
