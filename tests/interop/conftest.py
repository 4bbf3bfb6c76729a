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
import sys
from pathlib import Path
from typing import Iterator

import pytest

import launcher
import shapes
from launcher import VENVS, Server, free_port, server_env
from nnmark import models
from nnmark.attacks import weight_noise

NOISE_STD = 1e-3
NOISE_SEED = 0
SERVERS = ("mlserver", "kserve")
NNMARK_MODEL = "lenet"


def venv_python(kind: str) -> Path:
    """The server virtualenv's python; skips the test when ``make interop-envs`` has not made it."""
    venv = VENVS / kind
    if not (venv / ".installed").exists():
        pytest.skip(f"no {kind} virtualenv at {venv}: run `make interop-envs` (`make test` does)")
    return venv / "bin" / "python"


@contextlib.contextmanager
def running(*args) -> Iterator[Server]:
    """``launcher.running`` with a server that does not come up failing the test (not erroring it)."""
    try:
        with launcher.running(*args) as server:
            yield server
    except launcher.ServerNotReady as e:
        pytest.fail(str(e))


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


@pytest.fixture(scope="session")
def mlserver(served_models, tmp_path_factory) -> Iterator[Server]:
    """MLServer serving ``served_models`` through ``mlserver_runtime.NnmarkRuntime``, in-process (no worker pool)."""
    yield from _serving("mlserver", served_models, tmp_path_factory)


@pytest.fixture(scope="session")
def kserve(served_models, tmp_path_factory) -> Iterator[Server]:
    """KServe's ModelServer serving ``served_models`` as ``kserve_model.NnmarkModel``s (REST and gRPC)."""
    yield from _serving("kserve", served_models, tmp_path_factory)


def _serving(kind: str, served_models: list[dict], tmp_path_factory) -> Iterator[Server]:
    python = venv_python(kind)
    workdir = tmp_path_factory.mktemp(kind)
    ports = (free_port(), free_port())
    argv, env = launcher.server_command(kind, python, served_models, workdir, ports)
    with running(kind, argv, env, [e["name"] for e in served_models], *ports, workdir) as server:
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
