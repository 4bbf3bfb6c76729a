"""Serve a model over HTTP with the Open Inference Protocol v2 (KServe / Triton / MLServer "V2").

The model is reached only through an oracle (``TorchOracle`` or an environment's oracle), so the
server counts queries and honours the oracle's budget like any other caller. Routes::

    GET  /v2/health/live            {"live": true}           (never needs the token)
    GET  /v2/health/ready           {"ready": true}          (never needs the token)
    GET  /v2                        server metadata
    GET  /v2/models/{name}          model metadata: inputs [{"name": "input", "datatype": "FP32",
                                    "shape": [-1, C, H, W]}], outputs [{"name": "probabilities" or
                                    "logits", "datatype": "FP32", "shape": [-1, K]}, {"name": "label",
                                    "datatype": "INT64", "shape": [-1]}], parameters
                                    {"max_batch_size", "max_body_bytes", "input_range": [0, 1]}
    GET  /v2/models/{name}/ready    {"name": ..., "ready": true}
    POST /v2/models/{name}/infer    {"inputs": [{"name": "input", "shape": [N, C, H, W],
                                    "datatype": "FP32", "data": [N*C*H*W numbers, row-major]}]}
                                    -> {"model_name", "outputs": [{"name", "shape": [N, K],
                                    "datatype": "FP32", "data": [...]}, {"name": "label", "shape":
                                    [N], "datatype": "INT64", "data": [...]}]} (and "id" when sent)

"label" is the oracle's own top-1 decision (e.g. the argmax of float64 logits in a float64
environment): a float32 probability vector can tie where the model's outputs do not, and telltale
samples sit exactly there.

Every refusal is ``{"error": "one line"}`` with a 4xx status: 400 malformed request, 401 missing or
wrong bearer token, 403 the oracle's query budget is spent, 404 unknown model or route, 413 body
or batch too large; 500 when the model fails or returns outputs of the wrong shape or non-finite.

Numbers: inputs are decoded as float64 and cast to float32 (exact for float32 values sent as
Python floats, e.g. by ``HttpOracle``); outputs are float32 values written as the shortest float64
repr, which a client cast back to float32 recovers bit for bit. Data must be the flat row-major
list (nested lists, strings and booleans are refused).

Example::

    app = create_app(TorchOracle(model, (1, 28, 28)), model_name="lenet", token=b"s3cret")
    run(app, port=8000)                       # or: with serving(app) as url: HttpOracle(url, ...)
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import socket
import threading
import time
from typing import Iterator

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from nnmark import __version__
from nnmark.errors import InputError, NnmarkError, QueryBudgetExceeded
from nnmark.oracles import Oracle

INPUT_NAME = "input"
LABEL_NAME = "label"
OUTPUTS = ("probabilities", "logits")
BYTES_PER_VALUE = 32
"""Default body limit per input value: a float32 written as a JSON float64 repr plus separator is at most ~25 bytes."""


class _Refused(Exception):
    """A request the server answers with ``{"error": message}`` and ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _check_token(token: bytes | None) -> None:
    if token is None:
        return
    if not isinstance(token, bytes) or not token or any(b < 0x21 or b > 0x7E for b in token):
        raise ValueError("token must be non-empty bytes of printable ASCII without spaces")


def _authorize(request: Request, token: bytes | None) -> None:
    """401 unless the request carries ``Authorization: Bearer <token>`` (constant-time comparison)."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _Refused(401, "missing bearer token (send 'Authorization: Bearer <token>')")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token):
        raise _Refused(401, "wrong bearer token")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, f"bad Content-Length {declared!r}")
        if int(declared) > limit:
            raise _Refused(413, f"request body of {declared} bytes exceeds this server's limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"request body exceeds this server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_int(v) -> bool:
    return type(v) is int


def _decode_request(body: bytes, input_shape: tuple[int, int, int], max_batch: int,
                   output: str) -> tuple[torch.Tensor, object]:
    """Validate an OIP v2 infer body; return the float32 (N, C, H, W) inputs and the request id (or None).

    Raises ``_Refused`` (400 / 413) with one clear line for every malformed part.
    """
    try:
        req = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise _Refused(400, f"malformed JSON: {e}") from None
    if not isinstance(req, dict):
        raise _Refused(400, "request body must be a JSON object")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _Refused(400, f"'inputs' must be a list of exactly one tensor object named {INPUT_NAME!r}")
    tensor = inputs[0]
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise _Refused(400, f"input tensor lacks {', '.join(repr(k) for k in missing)}")
    if tensor["name"] != INPUT_NAME:
        raise _Refused(400, f"unknown input {tensor['name']!r}; this model takes {INPUT_NAME!r}")
    if tensor["datatype"] != "FP32":
        raise _Refused(400, f"datatype must be 'FP32', got {tensor['datatype']!r}")
    shape = tensor["shape"]
    want = ", ".join(map(str, input_shape))
    if not isinstance(shape, list) or len(shape) != 4 or not all(map(_is_int, shape)):
        raise _Refused(400, f"shape must be [N, {want}], got {shape!r}")
    if tuple(shape[1:]) != tuple(input_shape) or shape[0] < 1:
        raise _Refused(400, f"shape must be [N>=1, {want}], got {shape}")
    if shape[0] > max_batch:
        raise _Refused(413, f"batch of {shape[0]} inputs exceeds this server's max_batch_size {max_batch}")
    data = tensor["data"]
    if not isinstance(data, list) or not set(map(type, data)) <= {int, float}:
        raise _Refused(400, "data must be a flat row-major list of numbers")
    if len(data) != math.prod(shape):
        raise _Refused(400, f"data has {len(data)} values, shape {shape} needs {math.prod(shape)}")
    x64 = torch.tensor(data, dtype=torch.float64)
    if not torch.isfinite(x64).all():
        raise _Refused(400, "data contains NaN or infinite values")
    if x64.min() < 0 or x64.max() > 1:
        raise _Refused(400, f"data must lie in [0, 1], got values in [{x64.min().item():.6g}, {x64.max().item():.6g}]")
    wanted = req.get("outputs")
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and o.get("name") in (output, LABEL_NAME)
                                                   for o in wanted):
            raise _Refused(400, f"'outputs' may only ask for {output!r} and {LABEL_NAME!r}")
    return x64.to(torch.float32).reshape(shape), req.get("id")


def create_app(
    oracle: Oracle,
    *,
    model_name: str,
    token: bytes | None = None,
    output: str = "probabilities",
    max_batch: int = 256,
    max_body_bytes: int | None = None,
    card: dict | None = None,
) -> FastAPI:
    """An ASGI app serving ``oracle`` as OIP v2 model ``model_name``.

    Args:
        oracle: the model, reached only through it; its budget and query count are the server's.
        model_name: the {name} in the model routes.
        token: bearer token every route but /v2/health/* requires; None serves without one.
        output: "probabilities" (the oracle's float32 softmax) or "logits" (needs an oracle with
            ``logits``, e.g. ``TorchOracle``; cast to float32; the queries are still counted).
        max_batch: the most inputs one request may carry (published as ``max_batch_size``).
        max_body_bytes: the largest request body; None allows 32 bytes per value of a full batch + 64 KiB.
        card: the model card (``ModelCard.to_dict()``) published as the metadata parameter ``model_card``, so a
            client can check the input shape, the classes and whether the model normalises its [0, 1] inputs.

    Requests are answered one at a time (a lock around the oracle), off the event loop, so health
    checks answer while a batch runs.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "logits" and not oracle.gives_logits:
        raise ValueError(f"{type(oracle).__name__} gives no logits; serve it with output='probabilities'")
    if output == "probabilities" and not oracle.can("probabilities"):
        raise ValueError(f"{type(oracle).__name__} gives labels only; an OIP endpoint needs probabilities")
    if not model_name or "/" in model_name:
        raise ValueError("model_name must be a non-empty name without '/'")
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    _check_token(token)
    shape, classes = oracle.input_shape, oracle.num_classes
    if max_body_bytes is not None and max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1 or None")
    limit = max_body_bytes if max_body_bytes is not None else BYTES_PER_VALUE * max_batch * math.prod(shape) + 65536
    lock = threading.Lock()

    app = FastAPI(title="nnmark", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(_Refused)
    async def _refused(request: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}")

    def model_route(request: Request, name: str) -> None:
        _authorize(request, token)
        if name != model_name:
            raise _Refused(404, f"unknown model {name!r}; this server serves {model_name!r}")

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata(request: Request) -> dict:
        _authorize(request, token)
        return {"name": "nnmark", "version": __version__, "extensions": []}

    @app.get("/v2/models/{name}")
    async def model_metadata(request: Request, name: str) -> dict:
        model_route(request, name)
        return {
            "name": model_name,
            "versions": [],
            "platform": "pytorch",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *shape]}],
            "outputs": [{"name": output, "datatype": "FP32", "shape": [-1, classes]},
                        {"name": LABEL_NAME, "datatype": "INT64", "shape": [-1]}],
            "parameters": {"max_batch_size": max_batch, "max_body_bytes": limit, "input_range": [0, 1],
                           **({"model_card": card} if card is not None else {})},
        }

    @app.get("/v2/models/{name}/ready")
    async def model_ready(request: Request, name: str) -> dict:
        model_route(request, name)
        return {"name": model_name, "ready": True}

    def answer(body: bytes) -> JSONResponse:
        x, request_id = _decode_request(body, shape, max_batch, output)
        try:
            with lock:
                if output == "logits":
                    out = oracle.logits(x)
                    labels, out = out.argmax(dim=1), out.float()
                else:
                    out, labels = oracle.predict(x)
        except QueryBudgetExceeded as e:
            raise _Refused(403, str(e)) from None
        except InputError as e:
            raise _Refused(400, str(e)) from None
        except NnmarkError as e:
            raise _Refused(500, f"model failed: {e}") from None
        if out.shape != (x.shape[0], classes) or not torch.isfinite(out).all():
            raise _Refused(500, "model returned outputs of the wrong shape or non-finite values")
        response = {
            "model_name": model_name,
            "outputs": [{"name": output, "shape": [x.shape[0], classes], "datatype": "FP32",
                         "data": out.flatten().tolist()},
                        {"name": LABEL_NAME, "shape": [x.shape[0]], "datatype": "INT64", "data": labels.tolist()}],
        }
        if request_id is not None:
            response["id"] = request_id
        return JSONResponse(response)

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str) -> JSONResponse:
        model_route(request, name)
        body = await _read_body(request, limit)
        return await run_in_threadpool(answer, body)

    return app


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted; binds 127.0.0.1 unless ``host`` says otherwise."""
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning",
            startup_timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` from a background thread; yields its base URL and stops the server on exit.

    ``port=0`` takes a free port. For notebooks and tests; ``run`` is the blocking server.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"nnmark-serve-{bound}")
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {host}:{bound} did not start")
            time.sleep(0.01)
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
