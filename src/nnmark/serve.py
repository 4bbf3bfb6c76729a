"""Serve a model with the Open Inference Protocol v2 (KServe / Triton / MLServer "V2"), over REST and gRPC.

The model is reached only through an oracle (``TorchOracle`` or an environment's oracle), so the
server counts queries and honours the oracle's budget like any other caller. ``ServedModel`` holds
what both transports share (metadata, checked inference); ``create_app`` serves it over REST and
``grpc_server`` over gRPC (``inference.GRPCInferenceService``, needs ``nnmark[grpc]``). REST routes::

    GET  /v2/health/live            {"live": true}           (never needs the token)
    GET  /v2/health/ready           {"ready": true}          (never needs the token)
    GET  /v2                        server metadata (extensions: "binary_tensor_data")
    GET  /v2/models/{name}          model metadata: inputs [{"name": "input", "datatype": "FP32",
                                    "shape": [-1, C, H, W]}], outputs [{"name": "probabilities" or
                                    "logits", "datatype": "FP32", "shape": [-1, K]}, {"name": "label",
                                    "datatype": "INT64", "shape": [-1]}] (``output="labels"``: the label
                                    output only), parameters {"max_batch_size", "max_body_bytes",
                                    "input_range": [0, 1]} and the model card (below)
    GET  /v2/models/{name}/ready    {"name": ..., "ready": true}
    POST /v2/models/{name}/infer    {"id": "...", "inputs": [{"name": "input", "shape": [N, C, H, W],
                                    "datatype": "FP32", "data": [N*C*H*W numbers, flat or nested]}],
                                    "outputs": [{"name": ...}] (optional)} or the binary tensor
                                    extension -> {"model_name", "id" (echoed), "outputs": [...]}, each
                                    output binary when asked (``binary_data`` / ``binary_data_output``)
    (the model routes also answer under /v2/models/{name}/versions/{version}/...)

The model card in the metadata ``parameters`` lets a client check its description of the endpoint:
"input_shape" [C, H, W], "num_classes" K, "layout" "NCHW", "normalize" "none" (inputs are pixels in
[0, 1]), "output_kind", plus whatever ``card`` adds. "label" is the oracle's own top-1 decision (e.g.
the argmax of float64 logits in a float64 environment): a float32 probability vector can tie where the
model's outputs do not, and telltale samples sit exactly there.

Every refusal is ``{"error": "one line"}`` with a 4xx status: 400 malformed request (NaN, 1e999, a
400-digit integer, nested data that does not follow the shape, binary sizes that do not fit, a shape that
holds more values than the body has bytes, a length header that is not plain ASCII digits), 401
missing or wrong bearer token, 403 the oracle's query budget is spent, 404 unknown model or route, 405
(with ``Allow``), 408 body not received within ``BODY_READ_SECONDS``, 413 body or batch too large; 500
when the model fails or returns outputs of the wrong shape or non-finite. A client that disconnects
mid-request is dropped without a traceback; idle keep-alive connections close after
``KEEP_ALIVE_SECONDS``.

Callers: one bearer token (``token``), or named clients with a token each (``clients``), whose requests the
oracle answers as ``oracle.for_client(name)`` (DAWN records which client asked what); or no token on loopback.

Numbers: JSON inputs are decoded as float64 and cast to float32 (exact for float32 values sent as
Python floats, e.g. by ``HttpOracle``), binary inputs are taken as they are; JSON outputs are float32
values written as the shortest float64 repr, which a client cast back to float32 recovers bit for bit.

Example::

    app = create_app(TorchOracle(model, (1, 28, 28)), model_name="lenet", token=b"s3cret")
    run(app, port=8000)                       # or: with serving(app) as url: HttpOracle(url, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import math
import socket
import threading
import time
import warnings
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from nnmark import __version__
from nnmark.errors import ArgumentError, EndpointError, InputError, NnmarkError, QueryBudgetExceeded
from nnmark.oracles import Oracle, oip
from nnmark.oracles.auth import check_client, check_token

INPUT_NAME = "input"
LABEL_NAME = "label"
OUTPUTS = ("probabilities", "logits", "labels")
BYTES_PER_VALUE = 32
"""Default body limit per input value: a float32 written as a JSON float64 repr plus separator is at most ~25 bytes."""
GRPC_WORKERS = 4
"""Threads of the gRPC server (the model itself answers one request at a time)."""
GRPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "RESOURCE_EXHAUSTED", 404: "NOT_FOUND",
               413: "OUT_OF_RANGE", 500: "INTERNAL"}
"""The gRPC status of each refusal (HTTP status) of ``ServedModel``."""
KEEP_ALIVE_SECONDS = 5
"""An idle keep-alive connection is closed after this long."""
BODY_READ_SECONDS = 30.0
"""A request body not fully received this long after its headers is refused with 408."""
EXTENSIONS = ["binary_tensor_data"]


class _Refused(Exception):
    """A request the server answers with ``{"error": message}`` and ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def authorize(header: str | None, token: bytes | None, clients: Mapping[str, bytes] | None = None) -> str | None:
    """The caller: 401 unless ``header`` is ``Bearer <token>``, or the bearer of one of ``clients``' tokens (name ->
    token), whose name is returned (None for ``token`` or an open server). Every token is compared in constant
    time; both transports use it."""
    if token is None and not clients:
        return None
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _Refused(401, "missing bearer token (send 'Authorization: Bearer <token>')")
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    if clients:
        if found := [name for name, t in clients.items() if hmac.compare_digest(given_bytes, t)]:
            return found[0]
    elif hmac.compare_digest(given_bytes, token):
        return None
    raise _Refused(401, "wrong bearer token")


async def _read_body(request: Request, limit: int, seconds: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes, with 408
    when it takes longer than ``seconds`` to arrive, and with 400 when the client goes away."""
    declared = request.headers.get("content-length")
    if declared is not None:
        length = oip.parse_length(declared)
        if length is None:
            raise _Refused(400, f"bad Content-Length {declared[:30]!r}")
        if length > limit:
            raise _Refused(413, f"request body of {declared} bytes exceeds this server's limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _Refused(413, f"request body exceeds this server's limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise _Refused(408, f"request body not received within {seconds:g} s") from None
    except ClientDisconnect:
        raise _Refused(400, "client disconnected before its request body arrived") from None
    return b"".join(chunks)


class ServedModel:
    """An oracle as one OIP v2 model, transport-free: its metadata and checked, counted inference.

    Args:
        oracle: the model, reached only through it; its budget and query count are the server's.
        model_name: the {name} in the model routes.
        output: "probabilities" (the oracle's float32 softmax), "logits" (needs an oracle with
            ``logits``, e.g. ``TorchOracle``; cast to float32; the queries are still counted) or
            "labels" (the label output only, e.g. for a ``LabelsOracle``).
        max_batch: the most inputs one request may carry (published as ``max_batch_size``).
        card: more model-card entries for the metadata ``parameters`` (e.g. the data set's name).
        clients: the names of the clients that may ask; each is answered by ``oracle.for_client(name)``.

    Requests are answered one at a time (a lock around the oracle).
    """

    def __init__(self, oracle: Oracle, *, model_name: str, output: str = "probabilities", max_batch: int = 256,
                 card: Mapping | None = None, clients: Iterable[str] = ()):
        if output not in OUTPUTS:
            raise ArgumentError(f"output must be one of {OUTPUTS}, got {output!r}")
        if output == "logits" and not oracle.gives_logits:
            raise ArgumentError(f"{type(oracle).__name__} gives no logits; serve it with output='probabilities'")
        if output == "probabilities" and not oracle.can("probabilities"):
            raise ArgumentError(f"{type(oracle).__name__} gives labels only; serve it with output='labels'")
        if not model_name or "/" in model_name:
            raise ArgumentError("model_name must be a non-empty name without '/'")
        if max_batch < 1:
            raise ArgumentError("max_batch must be >= 1")
        self.oracle, self.name, self.output, self.max_batch = oracle, model_name, output, max_batch
        self.oracles = {None: oracle, **{name: oracle.for_client(name) for name in clients}}
        self.card = {"input_shape": list(oracle.input_shape), "num_classes": oracle.num_classes, "layout": "NCHW",
                     "normalize": "none", "output_kind": output, **(card or {})}
        self.outputs = ([] if output == "labels" else [output]) + [LABEL_NAME]
        self.lock = threading.Lock()

    def metadata(self, parameters: Mapping | None = None) -> dict:
        """The model metadata (OIP v2 JSON); ``parameters`` adds transport limits to the card."""
        classes = self.oracle.num_classes
        tensors = {self.output: {"name": self.output, "datatype": "FP32", "shape": [-1, classes]},
                   LABEL_NAME: {"name": LABEL_NAME, "datatype": "INT64", "shape": [-1]}}
        return {
            "name": self.name,
            "versions": [],
            "platform": "pytorch",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *self.oracle.input_shape]}],
            "outputs": [tensors[name] for name in self.outputs],
            "parameters": {"max_batch_size": self.max_batch, "input_range": [0, 1], **(parameters or {}), **self.card},
        }

    def _inputs(self, inputs: Mapping[str, np.ndarray]) -> torch.Tensor:
        """The one input as a float32 (N, C, H, W) tensor in [0, 1]; ``_Refused`` (400 / 413) otherwise."""
        if set(inputs) != {INPUT_NAME}:
            raise _Refused(400, f"'inputs' must be exactly one tensor named {INPUT_NAME!r}, got "
                                f"{', '.join(repr(n[:40]) for n in inputs) or 'none'}")
        x = inputs[INPUT_NAME]
        if x.dtype != np.float32:
            raise _Refused(400, f"datatype must be 'FP32', got {oip.datatype_of(x)!r}")
        want = ", ".join(map(str, self.oracle.input_shape))
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.oracle.input_shape) or x.shape[0] < 1:
            raise _Refused(400, f"shape must be [N>=1, {want}], got {list(x.shape)}")
        if x.shape[0] > self.max_batch:
            raise _Refused(413, f"batch of {x.shape[0]} inputs exceeds this server's max_batch_size {self.max_batch}")
        if not np.isfinite(x).all():
            raise _Refused(400, "data contains NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise _Refused(400, f"data must lie in [0, 1], got values in [{x.min():.6g}, {x.max():.6g}]")
        return torch.from_numpy(np.ascontiguousarray(x))

    def infer(self, inputs: Mapping[str, np.ndarray], wanted: list[str] | None,
              client: str | None = None) -> dict[str, np.ndarray]:
        """Check the inputs, ask the oracle (as ``client`` reaches it) once, and return the ``wanted`` outputs
        (None: all)."""
        if wanted is not None and not set(wanted) <= set(self.outputs):
            raise _Refused(400, f"'outputs' may only ask for {' and '.join(map(repr, self.outputs))}")
        x = self._inputs(inputs)
        oracle = self.oracles[client]
        try:
            with self.lock:
                if self.output == "logits":
                    out = oracle.logits(x)
                    labels, out = out.argmax(dim=1), out.float()
                elif self.output == "labels":
                    out, labels = None, oracle.labels(x)
                else:
                    out, labels = oracle.predict(x)
        except QueryBudgetExceeded as e:
            raise _Refused(403, str(e)) from None
        except InputError as e:
            raise _Refused(400, str(e)) from None
        except NnmarkError as e:
            raise _Refused(500, f"model failed: {e}") from None
        n = x.shape[0]
        if (out is not None and (out.shape != (n, oracle.num_classes) or not torch.isfinite(out).all())) \
                or labels.shape != (n,):
            raise _Refused(500, "model returned outputs of the wrong shape or non-finite values")
        answers = {self.output: None if out is None else out.numpy(), LABEL_NAME: labels.to(torch.int64).numpy()}
        return {name: answers[name] for name in (wanted or self.outputs)}


def create_app(
    oracle: Oracle,
    *,
    model_name: str,
    token: bytes | None = None,
    clients: Mapping[str, bytes] | None = None,
    output: str = "probabilities",
    max_batch: int = 256,
    max_body_bytes: int | None = None,
    card: Mapping | None = None,
    body_read_seconds: float = BODY_READ_SECONDS,
) -> FastAPI:
    """An ASGI app serving ``oracle`` as OIP v2 model ``model_name`` (``ServedModel`` gives the arguments).

    Args:
        token: bearer token every route but /v2/health/* requires; None serves without one.
        clients: instead of ``token``, named clients (name -> token, distinct), each answered by
            ``oracle.for_client(name)`` (e.g. DAWN records which client asked what).
        max_body_bytes: the largest request body; None allows 32 bytes per value of a full batch + 64 KiB.
        body_read_seconds: how long a request body may take to arrive.

    The model runs off the event loop, so health checks answer while a batch runs. ``app.state.model``,
    ``app.state.token`` and ``app.state.clients`` let ``grpc_server`` serve the same model to the same callers.
    """
    if token is not None and clients:
        raise ArgumentError("give a token or named clients' tokens, not both")
    if token is not None:
        token = check_token(token)
    clients = {check_client(name): check_token(t, f"client {name!r}'s token") for name, t in (clients or {}).items()}
    if len(set(clients.values())) < len(clients):
        raise ArgumentError("two clients share a token")
    model = ServedModel(oracle, model_name=model_name, output=output, max_batch=max_batch, card=card, clients=clients)
    if max_body_bytes is not None and max_body_bytes < 1:
        raise ArgumentError("max_body_bytes must be >= 1 or None")
    if not body_read_seconds > 0:
        raise ArgumentError("body_read_seconds must be > 0")
    limit = max_body_bytes if max_body_bytes is not None else \
        BYTES_PER_VALUE * max_batch * math.prod(oracle.input_shape) + 65536

    app = FastAPI(title="nnmark", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model, app.state.token, app.state.clients, app.state.body_limit = model, token, clients, limit

    @app.exception_handler(_Refused)
    async def _refused(request: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}")

    def model_route(request: Request, name: str) -> str | None:
        """The caller (``authorize``), once the model is this server's."""
        client = authorize(request.headers.get("authorization"), token, clients)
        if name != model_name:
            raise _Refused(404, f"unknown model {name[:60]!r}; this server serves {model_name!r}")
        return client

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata(request: Request) -> dict:
        authorize(request.headers.get("authorization"), token, clients)
        return {"name": "nnmark", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
        model_route(request, name)
        return model.metadata({"max_body_bytes": limit})

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request, name: str, version: str | None = None) -> dict:
        model_route(request, name)
        return {"name": model_name, "ready": True}

    def answer(body: bytes, header_length: str | None, client: str | None) -> Response:
        try:
            req = oip.decode_request(body, header_length)
        except EndpointError as e:
            raise _Refused(400, str(e)) from None
        outputs = model.infer(req.inputs, req.outputs, client)
        content, headers = oip.encode_response(model_name, outputs, request_id=req.id,
                                               binary={n for n in outputs if req.wants_binary(n)})
        return Response(content, headers=headers)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        client = model_route(request, name)
        body = await _read_body(request, limit, body_read_seconds)
        return await run_in_threadpool(answer, body, request.headers.get(oip.HEADER_LENGTH), client)

    return app


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port); ``EndpointError`` when the address is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit TCP_NODELAY: an answer's headers and body leave at once, not 40 ms apart
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise EndpointError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (localhost, 127.0.0.0/8, ::1)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: bytes | Mapping | None, insecure_no_token: bool) -> None:
    """Refuse to serve a non-loopback ``host`` without a token (or clients' tokens) unless ``insecure_no_token``,
    and then warn."""
    if token or is_loopback(host):
        return
    if not insecure_no_token:
        raise EndpointError(f"refusing to serve {host} without a token: give one (--token-file or NNMARK_TOKEN) "
                            f"or pass --insecure-no-token")
    # one location for every caller, so a process that serves REST and gRPC warns once
    warnings.warn(f"serving {host} WITHOUT a token: anyone who reaches it can query the model", stacklevel=1)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
        insecure_no_token: bool = False) -> None:
    """Serve ``app`` with uvicorn until interrupted; binds 127.0.0.1 unless ``host`` says otherwise.

    A non-loopback ``host`` needs the app to have a token, or ``insecure_no_token=True`` (then it warns);
    a taken port is an ``EndpointError`` before anything is served."""
    check_exposure(host, app.state.token or app.state.clients, insecure_no_token)
    sock = bind(host, port)
    try:
        config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=KEEP_ALIVE_SECONDS)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning",
            startup_timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` from a background thread; yields its base URL and stops the server on exit.

    ``port=0`` takes a free port. For notebooks and tests; ``run`` is the blocking server.
    """
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off",
                                           timeout_keep_alive=KEEP_ALIVE_SECONDS))
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


def grpc_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, insecure_no_token: bool = False):
    """Serve ``app``'s model and token over OIP v2 gRPC too (needs ``nnmark[grpc]``); returns the started
    ``grpc.Server`` and its port. The caller stops it (``server.stop(grace)``).

    Health RPCs never need the token; the others check ``authorization: Bearer <token>`` call metadata.
    Messages up to the REST body limit are accepted. Refusals are gRPC statuses (``GRPC_STATUS``) with the
    same one-line messages as REST.
    """
    from concurrent import futures

    import grpc

    from nnmark.oracles import oip_grpc, proto

    check_exposure(host, app.state.token or app.state.clients, insecure_no_token)
    model: ServedModel = app.state.model

    def guarded(fn, needs_token: bool = True):
        """The RPC answering ``fn(request, caller)`` (``authorize``'s client name) once the caller and model pass."""
        def method(request, context):
            try:
                client = authorize(dict(context.invocation_metadata()).get("authorization"), app.state.token,
                                   app.state.clients) if needs_token else None
                name = getattr(request, "name", None) or getattr(request, "model_name", None)
                if name is not None and name != model.name:
                    raise _Refused(404, f"unknown model {name[:60]!r}; this server serves {model.name!r}")
                return fn(request, client)
            except _Refused as e:
                context.abort(getattr(grpc.StatusCode, GRPC_STATUS.get(e.status, "INTERNAL")), e.message)
            except EndpointError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return method

    def infer(request, client):
        inputs = oip_grpc.read_tensors(request.inputs, list(request.raw_input_contents), "inputs", request.ByteSize())
        outputs = model.infer(inputs, [o.name for o in request.outputs] or None, client)
        answer = proto.ModelInferResponse(model_name=model.name, model_version=request.model_version, id=request.id)
        oip_grpc.write_tensors(outputs, answer.outputs, answer.raw_output_contents)
        return answer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS), options=[
        ("grpc.max_receive_message_length", app.state.body_limit), ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([oip_grpc.service_handler({
        "ServerLive": guarded(lambda r, _: proto.ServerLiveResponse(live=True), needs_token=False),
        "ServerReady": guarded(lambda r, _: proto.ServerReadyResponse(ready=True), needs_token=False),
        "ServerMetadata": guarded(lambda r, _: proto.ServerMetadataResponse(name="nnmark", version=__version__,
                                                                            extensions=EXTENSIONS)),
        "ModelReady": guarded(lambda r, _: proto.ModelReadyResponse(ready=True)),
        "ModelMetadata": guarded(lambda r, _: oip_grpc.metadata_message(model.metadata())),
        "ModelInfer": guarded(infer),
    })])
    try:
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise EndpointError(f"cannot serve gRPC on {host}:{port} (address in use or not available)")
    server.start()
    return server, bound


@contextlib.contextmanager
def serving_grpc(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """``grpc_server`` for the length of a ``with`` block; yields its ``grpc://host:port`` URL."""
    server, bound = grpc_server(app, host, port)
    try:
        yield f"grpc://{f'[{host}]' if ':' in host else host}:{bound}"
    finally:
        server.stop(None).wait()
