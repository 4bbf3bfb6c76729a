"""Real inference servers for the interop tests: MLServer 1.7 and KServe 0.21, each a subprocess of its own
virtualenv (``make interop-envs``; ``make test`` makes them) on 127.0.0.1 with free HTTP and gRPC ports.

Each server runs once per session and serves ``shapes.served_models`` of the session's LeNet-5
(``lenet_file``) and of its copy with N(0, ``NOISE_STD``^2) weight noise. A server whose
virtualenv is missing skips its tests with the reason; one that does not become ready within
``STARTUP_TIMEOUT`` fails them with the tail of its log. At teardown the server's process group gets
SIGTERM, then SIGKILL after ``STOP_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

import shapes
from nnmark import models
from nnmark.attacks import weight_noise

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENVS = ROOT / ".interop"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 180.0
POLL_INTERVAL = 0.25
PROBE_TIMEOUT = 2.0
STOP_TIMEOUT = 15.0
LOG_TAIL_BYTES = 3000
NOISE_STD = 1e-3
NOISE_SEED = 0
SERVERS = ("mlserver", "kserve")
NNMARK_MODEL = "lenet"


@dataclasses.dataclass(frozen=True)
class Server:
    """A running server: its REST base URL, its gRPC address (host:port) and the names of its models."""

    kind: str
    url: str
    grpc: str
    models: tuple[str, ...]


def venv_python(kind: str) -> Path:
    """The server virtualenv's python; skips the test when ``make interop-envs`` has not made it."""
    venv = VENVS / kind
    if not (venv / ".installed").exists():
        pytest.skip(f"no {kind} virtualenv at {venv}: run `make interop-envs` (`make test` does)")
    return venv / "bin" / "python"


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
    """Poll the server's and every model's readiness, bounded in count and time; fail with the log's tail."""
    routes = ["/v2/health/ready", *(f"/v2/models/{name}/ready" for name in names)]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(base_url=url, timeout=PROBE_TIMEOUT) as client:
        for _ in range(int(STARTUP_TIMEOUT / POLL_INTERVAL)):
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode} before it was ready:\n{_log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                while routes and client.get(routes[0]).status_code == 200:
                    routes.pop(0)
            if not routes or time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
    if routes:
        pytest.fail(f"server not ready after {STARTUP_TIMEOUT:g} s ({routes[0]}):\n{_log_tail(log)}")


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


@pytest.fixture(scope="session")
def checkpoints(lenet_file, tmp_path_factory) -> dict[str, Path]:
    """{"clean": the session's LeNet-5 checkpoint, "noised": its copy with N(0, NOISE_STD^2) weight noise}."""
    model, config = models.load(lenet_file)
    noised = tmp_path_factory.mktemp("interop-models") / "noised.safetensors"
    models.save(weight_noise(model, NOISE_STD, seed=NOISE_SEED), config, noised)
    return {"clean": Path(lenet_file), "noised": noised}


@pytest.fixture(scope="session")
def served_models(checkpoints) -> list[dict]:
    """What each server serves (``shapes.served_models``)."""
    return shapes.served_models(str(checkpoints["clean"]), str(checkpoints["noised"]))


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


@pytest.fixture(scope="session")
def mlserver(served_models, lenet_file, tmp_path_factory) -> Iterator[Server]:
    """MLServer serving ``served_models`` through ``mlserver_runtime.NnmarkRuntime``, in-process (no worker pool)."""
    python = venv_python("mlserver")
    workdir = tmp_path_factory.mktemp("mlserver")
    config = models.load(lenet_file)[1]
    write_model_settings(workdir / "models", served_models, tuple(config.input_shape), config.num_classes)
    http_port, grpc_port = free_port(), free_port()
    env = server_env(workdir)
    env.update(MLSERVER_HOST=HOST, MLSERVER_HTTP_PORT=str(http_port), MLSERVER_GRPC_PORT=str(grpc_port),
               MLSERVER_METRICS_ENDPOINT="", MLSERVER_PARALLEL_WORKERS="0")
    argv = [str(python), "-m", "mlserver.cli.main", "start", str(workdir / "models")]
    with running("mlserver", argv, env, [e["name"] for e in served_models], http_port, grpc_port, workdir) as server:
        yield server


@pytest.fixture(scope="session")
def kserve(served_models, tmp_path_factory) -> Iterator[Server]:
    """KServe's ModelServer serving ``served_models`` as ``kserve_model.NnmarkModel``s (REST and gRPC)."""
    python = venv_python("kserve")
    workdir = tmp_path_factory.mktemp("kserve")
    (workdir / "models.json").write_text(json.dumps(served_models))
    http_port, grpc_port = free_port(), free_port()
    argv = [str(python), str(HERE / "kserve_model.py"), "--models", str(workdir / "models.json"),
            "--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    names = [e["name"] for e in served_models]
    with running("kserve", argv, server_env(workdir), names, http_port, grpc_port, workdir) as server:
        yield server


@pytest.fixture(params=SERVERS)
def server(request) -> Server:
    """Each real server in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def nnmark_serve(lenet_file, tmp_path_factory) -> Iterator[Server]:
    """``nnmark serve`` of the session's LeNet-5 as model "lenet", over REST and gRPC."""
    workdir = tmp_path_factory.mktemp("nnmark-serve")
    http_port, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "nnmark", "serve", "--model", str(lenet_file), "--model-name", NNMARK_MODEL,
            "--port", str(http_port), "--grpc-port", str(grpc_port)]
    with running("nnmark", argv, server_env(workdir), [NNMARK_MODEL], http_port, grpc_port, workdir) as server:
        yield server
