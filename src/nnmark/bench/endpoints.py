"""``nnmark bench endpoints``: the cost of verifying through a served model, per transport and server.

For a LeNet-5 trained briefly on mnist5k and DBI keys of N queries, ``marks.verify`` is timed locally
(``TorchOracle``) and through ``connect(spec)`` over REST JSON, REST binary and gRPC against three
Open Inference Protocol v2 servers, in one run:

- ``nnmark serve`` (``serve.create_app`` in this process: its REST server on a thread, its gRPC server
  on a thread pool; it shares this process's interpreter with the client), always;
- MLServer and KServe, each a subprocess of its own virtualenv under ``.interop/`` (``make
  interop-envs``), started with ``tests/interop/launcher.py`` and serving the checkpoint
  through ``tests/interop/shapes.py``'s "probabilities" shape; without their virtualenvs their rows say
  so. MLServer answers the binary tensor extension with HTTP 500, so it is measured over JSON and gRPC.

Every oracle is opened and asked the key once before it is timed (connection set-up, metadata and
warm-up excluded), then ``verify`` runs ``repeats`` times; the table gives the median wall time, its
ratio to local, and the bytes on the wire per ``verify``: the request and answer bodies (HTTP bodies as
sent and read, without headers; gRPC the encoded protobuf messages, without HTTP/2 framing). The
consistency check is off (it re-asks two inputs per call: a cost of the check, not of the transport).
Every target must reach the local verdict.
"""

from __future__ import annotations

import contextlib
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from nnmark import data, marks, models
from nnmark.bench.common import document, header, parameters, section, table, write
from nnmark.errors import EndpointError, first_line
from nnmark.keys import KeyFile
from nnmark.marks.integrity import dbi
from nnmark.oracles import EndpointOracle, EndpointSpec, HttpOracle, Oracle, TorchOracle, connect
from nnmark.serve import create_app, serving, serving_grpc

FULL = {"seeds": 1, "repeats": 5, "sizes": (20, 256, 1024), "epochs": 1, "itr": 10}
QUICK = {"seeds": 1, "repeats": 2, "sizes": (20, 256), "epochs": 1, "itr": 10}
INTEROP = Path(__file__).resolve().parents[3] / "tests" / "interop"
"""The real-server launcher and the model code the servers import (a source checkout's tests/interop)."""
VENVS = INTEROP.parents[1] / ".interop"
"""Where ``make interop-envs`` puts the servers' virtualenvs."""
SHAPE = "probabilities"
"""The served shape (``shapes.SHAPES``): FP32 NCHW in, probabilities and labels out, as ``nnmark serve``."""
MODEL_NAME = SHAPE
SERVE_MAX_BATCH = 1024
"""``nnmark serve``'s batch limit: every call of the largest key is one request, as with the other servers."""
GOAL_RATIO = 3.0
"""The goal: REST binary and gRPC at most this many times local."""
TRANSPORTS = {"rest": "REST JSON", "rest-binary": "REST binary", "grpc": "gRPC"}
TARGETS = {"nnmark serve": ("rest", "rest-binary", "grpc"), "KServe": ("rest", "rest-binary", "grpc"),
           "MLServer": ("rest", "grpc")}
"""Each target and the transports it speaks."""
GOAL_TRANSPORTS = (TRANSPORTS["rest-binary"], TRANSPORTS["grpc"])
NOT_MEASURED = "not measured: run make interop-envs"
SECRET = b"bench endpoints secret"


def _fixture(folder: Path, p: dict) -> tuple[Oracle, Path, dict[int, KeyFile]]:
    """A LeNet-5 trained ``epochs`` on mnist5k, its checkpoint in ``folder``, and a DBI key per size."""
    ds = data.load("mnist5k")
    torch.manual_seed(0)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=p["epochs"], seed=0)
    checkpoint = folder / "lenet5.safetensors"
    models.save(model, models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="mnist5k"), checkpoint)
    oracle = TorchOracle(model, ds.shape)
    keys = {n: dbi.create(oracle, ds.train.x[:n], itr=p["itr"], model_digest=models.digest(model))
            for n in p["sizes"]}
    return oracle, checkpoint, keys


def count_bytes(oracle: EndpointOracle) -> list[int]:
    """Make ``oracle`` add the size of every request and answer body it exchanges to the returned counter
    (HTTP: the bodies as sent and as read; gRPC: the encoded protobuf messages)."""
    counter = [0]
    if isinstance(oracle, HttpOracle):
        request = oracle._request

        def counted(method, path, body=None, headers=None):
            answer_headers, content = request(method, path, body, headers)
            counter[0] += len(body or b"") + len(content)
            return answer_headers, content
        oracle._request = counted
    else:
        call = oracle._call

        def counted(method, message):
            answer = call(method, message)
            counter[0] += message.ByteSize() + answer.ByteSize()
            return answer
        oracle._call = counted
    return counter


def time_verify(oracle: Oracle, key: KeyFile, repeats: int, counter: list[int] | None = None) -> dict:
    """Median wall seconds of ``marks.verify(oracle, key)`` after one untimed call, its verdict, and the bytes
    per call that ``counter`` (``count_bytes``) counted."""
    counter = counter or [0]
    marks.verify(oracle, key, secret=SECRET)
    counter[0] = 0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        verdict = marks.verify(oracle, key, secret=SECRET)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "runs_s": times, "bytes": counter[0] // repeats,
            "decision": verdict.decision, "flipped": len(verdict.flipped)}


def measure_target(urls: dict[str, str], keys: dict[int, KeyFile], local: Oracle, repeats: int,
                   progress: bool) -> dict[str, dict[int, dict]]:
    """{transport: {N: timing}} of verifying each key through each of ``urls`` ({transport: URL}) to a server
    of the ``local`` oracle's model."""
    results: dict[str, dict[int, dict]] = {}
    for transport, url in tqdm(urls.items(), desc="transports", disable=not progress, leave=False):
        spec = EndpointSpec(url, transport=transport, model_name=MODEL_NAME, consistency_check=False)
        with connect(spec, input_shape=local.input_shape, num_classes=local.num_classes) as oracle:
            counter = count_bytes(oracle)
            results[transport] = {n: time_verify(oracle, key, repeats, counter) for n, key in keys.items()}
    return results


@contextlib.contextmanager
def nnmark_serve(oracle: Oracle) -> Iterator[dict[str, str]]:
    """``nnmark serve`` of ``oracle`` in this process: {transport: URL}."""
    app = create_app(oracle, model_name=MODEL_NAME, max_batch=SERVE_MAX_BATCH)
    with serving(app) as url, serving_grpc(app) as grpc_url:
        yield {"rest": url, "rest-binary": url, "grpc": grpc_url}


def _launcher() -> ModuleType:
    """tests/interop/launcher.py (with ``shapes`` beside it importable): the real-server launcher."""
    if str(INTEROP) not in sys.path:
        sys.path.insert(0, str(INTEROP))
    return importlib.import_module("launcher")


@contextlib.contextmanager
def real_server(kind: str, checkpoint: Path, workdir: Path) -> Iterator[dict[str, str]]:
    """MLServer or KServe serving ``checkpoint`` on 127.0.0.1 (free ports, bounded readiness wait, stopped
    on exit): {transport: URL}."""
    launcher = _launcher()
    ports = (launcher.free_port(), launcher.free_port())
    entries = [{"name": MODEL_NAME, "checkpoint": str(checkpoint), "shape": SHAPE, "dtype": "float32"}]
    argv, env = launcher.server_command(kind, VENVS / kind / "bin" / "python", entries, workdir, ports)
    try:
        with launcher.running(kind, argv, env, [MODEL_NAME], *ports, workdir) as server:
            yield {"rest": server.url, "rest-binary": server.url, "grpc": f"grpc://{server.grpc}"}
    except launcher.ServerNotReady as e:
        raise EndpointError(f"{kind} did not start: {first_line(e)}") from None


def _installed(kind: str) -> bool:
    return (INTEROP / "launcher.py").exists() and (VENVS / kind / ".installed").exists()


def measure(oracle: Oracle, checkpoint: Path, keys: dict[int, KeyFile], p: dict, progress: bool) -> dict:
    """{"local": {N: timing}, target: {transport: {N: timing}} or None when not measured}."""
    results: dict = {"local": {n: time_verify(oracle, key, p["repeats"]) for n, key in keys.items()}}
    starts: dict[str, Callable] = {"nnmark serve": lambda folder: nnmark_serve(oracle),
                                   "KServe": lambda folder: real_server("kserve", checkpoint, folder),
                                   "MLServer": lambda folder: real_server("mlserver", checkpoint, folder)}
    for target, transports in TARGETS.items():
        if target != "nnmark serve" and not _installed(target.lower()):
            results[target] = None
            continue
        with tempfile.TemporaryDirectory(prefix="nnmark-bench-server-") as folder, starts[target](Path(folder)) as urls:
            results[target] = measure_target({t: urls[t] for t in transports}, keys, oracle, p["repeats"],
                                             progress)
    return results


def check_verdicts(results: dict) -> None:
    """Every measured transport reached the local decision on every key (``AssertionError`` otherwise)."""
    for target in TARGETS:
        for transport, timings in (results[target] or {}).items():
            for n, timing in timings.items():
                local = results["local"][n]["decision"]
                assert timing["decision"] == local, \
                    f"{target} over {transport}, N={n}: {timing['decision']}, locally {local}"


def rows(results: dict) -> list[dict]:
    """One row per target, transport and N: median seconds, ratio to local, bytes (None: not measured)."""
    out = []
    for n, local in results["local"].items():
        out.append({"target": "local", "transport": "TorchOracle", "n": n, **local, "ratio": 1.0})
        for target, transports in TARGETS.items():
            for transport in transports:
                timing = (results[target] or {}).get(transport, {}).get(n)
                ratio = timing["median_s"] / local["median_s"] if timing else None
                out.append({"target": target, "transport": TRANSPORTS[transport], "n": n, **(timing or {}),
                            "ratio": ratio})
    return out


def _cells(row: dict) -> list:
    if row["ratio"] is None:
        return [row["target"], row["transport"], row["n"], NOT_MEASURED, "", ""]
    size = f"{row['bytes'] / 2**20:.2f}" if row["target"] != "local" else "—"
    return [row["target"], row["transport"], row["n"], f"{row['median_s'] * 1e3:.1f}", f"{row['ratio']:.2f}x", size]


def times_table(table_rows: list[dict]) -> str:
    """The side-by-side table: per N, local then every target and transport."""
    return table(["target", "transport", "N", "median ms", "ratio to local", "MiB on the wire"],
                 [_cells(r) for r in table_rows], align="llrrrr")


def goal_table(table_rows: list[dict]) -> str:
    """Each target's REST binary and gRPC ratio to local per N, and whether all are within the goal."""
    sizes = sorted({r["n"] for r in table_rows})
    ratios: dict[tuple[str, str], dict[int, float]] = {}
    for r in table_rows:
        if r["transport"] in GOAL_TRANSPORTS and r["ratio"] is not None:
            ratios.setdefault((r["target"], r["transport"]), {})[r["n"]] = r["ratio"]
    return table(["target", "transport", *(f"N={n}" for n in sizes), f"at most {GOAL_RATIO:g}x"],
                 [[*pair, *(f"{by_n[n]:.2f}x" for n in sizes), "met" if max(by_n.values()) <= GOAL_RATIO else "missed"]
                  for pair, by_n in ratios.items()], align="ll" + "r" * len(sizes) + "l")


def render(result: dict) -> str:
    p = result["params"]
    intro = (f"`{result['command']}` ({result['date']}). `marks.verify` of DBI keys of N queries on a LeNet-5 "
             f"trained {p['epochs']} epoch on mnist5k, locally and through `connect(spec)`; median of "
             f"{p['repeats']} runs after one untimed call on an open connection (set-up excluded), consistency "
             "check off. Bytes: request and answer bodies per `verify` (HTTP bodies without headers; gRPC the "
             "encoded protobuf messages without HTTP/2 framing). `nnmark serve` runs in the measuring process; "
             "MLServer and KServe are subprocesses. MLServer answers the binary extension with HTTP 500: JSON "
             f"and gRPC only. Every transport reached the local verdict ({result['decision']}).")
    return document("# Verify through endpoints", intro, times_table(result["rows"]),
                    section(f"Goal: REST binary and gRPC at most {GOAL_RATIO:g}x local", goal_table(result["rows"])))


def run(*, quick: bool = False, seeds: int | None = None, out_dir: str | Path = "docs/benchmarks",
        progress: bool = False) -> Path:
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    p["repeats"] *= p["seeds"]
    with tempfile.TemporaryDirectory(prefix="nnmark-bench-endpoints-") as tmp:
        oracle, checkpoint, keys = _fixture(Path(tmp), p)
        results = measure(oracle, checkpoint, keys, p, progress)
    check_verdicts(results)
    decision = ", ".join(sorted({timing["decision"] for timing in results["local"].values()}))
    result = {**header("endpoints", p, quick=quick, seeds=seeds), "decision": decision, "rows": rows(results)}
    return write(out_dir, "endpoints", result, render(result))
