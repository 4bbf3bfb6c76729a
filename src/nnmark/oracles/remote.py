"""Oracles over a model behind an Open Inference Protocol v2 endpoint (KServe, Triton, MLServer, ``nnmark serve``).

``EndpointOracle`` owns what every transport shares; ``HttpOracle`` speaks REST (JSON, or the binary
tensor extension with ``transport="rest-binary"``) and ``GrpcOracle`` (``nnmark.oracles.oip_grpc``) gRPC.
``connect(spec)`` opens the one the spec's transport names. How the model is shaped (tensor names,
layout, datatype, normalisation, output kind) is an ``EndpointSpec`` filled from the server's metadata
(``nnmark.oracles.endpoint``). Access: probabilities, or labels for a label-only endpoint. ``labels`` are
the endpoint's own label output when it offers one (``nnmark serve`` does: a float64 model's decision can
differ from the argmax of its float32 probabilities), the argmax of its logits, else of its probabilities.

Choices where the protocol leaves room:
- The model name is part of the spec (default "model"); a model version goes to
  ``/v2/models/{name}/versions/{v}``.
- Every request carries an ``id`` (``nnmark-<n>``); any ``id`` may come back.
- The batch limit is the smallest of ``batch_size`` and the metadata's ``parameters.max_batch_size``;
  with neither, a whole call is one request. ``max_batch_size`` must be an integer in [0, 2**31 - 1]
  (anything else is refused); 0 means, as in Triton's model configuration, that the server adds no batch
  dimension, so the input's first dimension is the model's own: -1 (any number), 1 (one input per request)
  or a fixed size, which is refused.
- Retries: only transient failures (connection errors, timeouts, HTTP 429, 502, 503, 504) are retried,
  after ``backoff * 2**i`` s; any other refusal (a 500 included) fails at once with the server's message.
- Limits: ``timeout`` bounds each request from connecting to its last byte (the answer is read in chunks
  and cut off at the first chunk past the deadline; a server that stalls is cut off by the same time
  per read), and an answer longer than ``max_answer_bytes`` is cut off and refused.
- Queries are counted once per input asked, before any request is sent; a retried request is not
  counted again, a failed call's queries stay spent (the endpoint may have answered them).
- Consistency check: after each call, ``consistency_samples`` inputs drawn with the oracle's seeded
  generator are asked again in a separate request, and the oracle refuses (``EndpointError``) when a
  probability moves by more than ``consistency_atol`` (labels are not compared: a boundary sample's label
  may honestly change with the batch size; a label-only endpoint is not re-asked). These re-queries count
  against the budget. The default tolerance is 1e-5, not 0: an honest float32 CPU model answers the same
  input differently by ~1e-8 when it sits in a batch of another size (measured for LeNet-5 and ResNet-20),
  so a bitwise check would refuse honest endpoints; ``consistency_atol=0`` is the bitwise check for
  endpoints known to be batch-invariant. An endpoint that lies consistently (e.g. replays stored answers)
  cannot be caught this way.
- An answer of the wrong shape or datatype (a shape that does not fit the batch asked, the data sent or
  the answer's own size is refused before any array is made), with non-finite probabilities or values
  outside [0, 1], or with a row summing further than 1e-3 from 1, is refused as malformed.

Example::

    with HttpOracle("http://127.0.0.1:8000", model_name="lenet", token="s3cret", budget=1000) as oracle:
        verdict = marks.verify(oracle, key)
    spec = EndpointSpec("grpc://127.0.0.1:8001", model_name="lenet", output_kind="logits")
    with connect(spec, token="s3cret") as oracle: ...
"""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import replace
from typing import Callable, Mapping, TypeVar

import httpx
import numpy as np
import torch
from tqdm.auto import tqdm

from nnmark.errors import EndpointError, EndpointInconsistent, EndpointUnreachable
from nnmark.oracles import oip
from nnmark.oracles.auth import check_token
from nnmark.oracles.base import Oracle
from nnmark.oracles.endpoint import SPEC_FIELDS, Endpoint, EndpointSpec, read_answer, resolve, to_wire

TRANSIENT_STATUS = (429, 502, 503, 504)
T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying (connection lost, timed out, server busy); its message says which."""


def make_spec(spec: EndpointSpec | str, fields: Mapping) -> EndpointSpec:
    """``spec`` itself, a URL made into a spec, either with ``fields`` replaced."""
    if isinstance(spec, EndpointSpec):
        return replace(spec, **fields) if fields else spec
    return EndpointSpec(spec, **fields)


class EndpointOracle(Oracle):
    """What every OIP v2 transport shares: the metadata check, batching, retries, the consistency check and
    reading answers. A transport opens its connection, then calls this ``__init__`` (which closes it again
    when the endpoint does not fit), and implements ``_metadata``, ``_exchange`` and ``close``.

    Args:
        spec: the endpoint (see ``EndpointSpec``).
        budget: the most inputs answered in total, re-queries included (None: no limit).
        input_shape: the (C, H, W) the caller's queries have (e.g. the key's), to check against the metadata.
        num_classes: the K the caller expects, likewise.
        seed: seeds the choice of the re-asked inputs.
        progress: a progress bar on stderr over the requests of a call that takes several.
    """

    def __init__(self, spec: EndpointSpec, *, budget: int | None = None,
                 input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None, seed: int = 0,
                 progress: bool = False):
        self.spec = spec
        self.progress = progress
        self._ids = itertools.count(1)
        self._generator = torch.Generator().manual_seed(seed)
        try:
            metadata = self._metadata()
            self.metadata = metadata  # as published, in OIP v2 REST JSON form whatever the transport (audit logs it)
            try:
                self.endpoint: Endpoint = resolve(spec, metadata, input_shape=input_shape, num_classes=num_classes)
            except EndpointError as e:
                raise EndpointError(f"model {spec.model_name!r} at {spec.shown_url}: {e}") from None
        except BaseException:
            self.close()
            raise
        self.access = self.endpoint.access
        self.batch_size = self.endpoint.batch_limit
        super().__init__(self.endpoint.input_shape, self.endpoint.num_classes, budget)

    def _metadata(self) -> dict:
        """The model metadata as the OIP v2 REST JSON object."""
        raise NotImplementedError

    def server_metadata(self) -> dict:
        """The server's own metadata (OIP v2: name, version, extensions) as a REST JSON object; one more request,
        made only when asked (``nnmark audit`` logs it: what runs the model)."""
        raise NotImplementedError

    def _exchange(self, inputs: dict[str, np.ndarray], request_id: str) -> Mapping[str, np.ndarray]:
        """One infer request; the answer's output arrays."""
        raise NotImplementedError

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()`` again after each ``Transient`` failure, at most ``retries + 1`` times."""
        failure = ""
        for i in range(self.spec.retries + 1):
            if i:
                time.sleep(self.spec.backoff * 2 ** (i - 1))
            try:
                return attempt()
            except Transient as e:
                failure = str(e)
        raise EndpointUnreachable(f"{what} at {self.spec.shown_url} failed {self.spec.retries + 1} times; last: "
                                  f"{failure}")

    def _cost(self, n: int) -> int:
        return n + self._rechecks(n)

    def _rechecks(self, n: int) -> int:
        return min(self.spec.consistency_samples, n) if self.spec.consistency_check and self.access != "labels" else 0

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One request of n <= batch limit queries; the checked float32 probabilities (or None) and labels."""
        inputs = {self.endpoint.spec.input_name: to_wire(x, self.endpoint)}
        outputs = self._exchange(inputs, f"nnmark-{next(self._ids)}")
        return read_answer(outputs, x.shape[0], self.endpoint)

    def _ask(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        chunks = x.split(self.batch_size or x.shape[0])
        answers = [self._infer(chunk) for chunk in tqdm(chunks, desc=self.spec.shown_url, unit="request", leave=False,
                                                        disable=not self.progress or len(chunks) < 2)]
        p = None if answers[0][0] is None else torch.cat([a for a, _ in answers])
        return p, torch.cat([y for _, y in answers])

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x)[0]

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x)[1]

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, labels = self._ask(x)
        m = self._rechecks(x.shape[0])
        if m:
            idx = torch.randperm(x.shape[0], generator=self._generator)[:m]
            again, _ = self._ask(x[idx])
            moved = (again - p[idx]).abs().max().item()
            if not moved <= self.spec.consistency_atol:
                raise EndpointInconsistent(
                    f"endpoint answered the same input two different ways (max change {moved:.3g} > "
                    f"tolerance {self.spec.consistency_atol:g}); refusing its answers", spread=moved)
        return p, labels


def _message(body: bytes) -> str:
    """The server's one-line ``{"error": ...}`` message, else the start of its body."""
    try:
        error = oip.loads(body).get("error")
    except (EndpointError, AttributeError):
        error = None
    text = error if isinstance(error, str) else body[:200].decode("utf-8", "replace")
    return " ".join(text.split())[:300]


class HttpOracle(EndpointOracle):
    """An oracle over an OIP v2 REST endpoint, JSON or binary (see the module docstring for the choices).

    Args:
        spec: an ``EndpointSpec``, or the base URL (e.g. "http://127.0.0.1:8000") with spec fields as
            keywords (``model_name="lenet"``, ``timeout=5``, ``transport="rest-binary"``, ...).
        token: bearer token sent as ``Authorization: Bearer <token>`` (checked by ``auth.check_token``).
        budget, input_shape, num_classes, seed, progress: as ``EndpointOracle``.

    Raises ``EndpointError`` on construction when the endpoint is unreachable, not OIP v2, or serves a
    model that contradicts the spec.
    """

    def __init__(self, spec: EndpointSpec | str, *, token: str | bytes | None = None, budget: int | None = None,
                 input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None, seed: int = 0,
                 progress: bool = False, **fields):
        spec = make_spec(spec, fields)
        if spec.transport == "grpc":
            raise EndpointError(f"{spec.shown_url} is a gRPC endpoint: use GrpcOracle or connect()")
        headers = {"Accept": f"{oip.JSON_TYPE}, {oip.BINARY_TYPE}"}
        if token is not None:
            headers["Authorization"] = "Bearer " + check_token(token).decode()
        # TCP_NODELAY: a request's headers and body go out at once, not 40 ms apart (Nagle + delayed ACK)
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self._client = httpx.Client(base_url=spec.url, timeout=spec.timeout, headers=headers, transport=transport)
        super().__init__(spec, budget=budget, input_shape=input_shape, num_classes=num_classes, seed=seed,
                         progress=progress)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _model_path(self, route: str = "") -> str:
        version = f"/versions/{self.spec.model_version}" if self.spec.model_version else ""
        return f"/v2/models/{self.spec.model_name}{version}{route}"

    def _attempt(self, method: str, path: str, body: bytes | None, headers: dict | None) -> tuple[httpx.Headers, bytes]:
        """One request read within the deadline and the byte cap; ``Transient`` or ``EndpointError`` otherwise."""
        deadline = time.monotonic() + self.spec.timeout
        try:
            with self._client.stream(method, path, content=body, headers=headers) as response:
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.spec.max_answer_bytes:
                        raise EndpointError(f"{self.spec.shown_url}{path} answered more than "
                                            f"{self.spec.max_answer_bytes} bytes; refusing it (see max_answer_bytes)")
                    if time.monotonic() > deadline:
                        raise Transient(f"no complete answer within {self.spec.timeout:g} s")
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise Transient(f"no answer within {self.spec.timeout:g} s") from None
        except httpx.TransportError as e:
            raise Transient(f"{type(e).__name__}: {e}") from None
        content = b"".join(chunks)
        if response.status_code in TRANSIENT_STATUS:
            raise Transient(f"HTTP {response.status_code}: {_message(content)}")
        if response.status_code >= 400:
            refused = EndpointUnreachable if response.status_code >= 500 else EndpointError
            raise refused(f"endpoint {self.spec.shown_url}{path} refused the request "
                                f"(HTTP {response.status_code}): {_message(content)}")
        return response.headers, content

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None) -> tuple[httpx.Headers, bytes]:
        return self._retrying("request", lambda: self._attempt(method, path, body, headers))

    def _metadata(self) -> dict:
        return self._json_object(self._model_path(), "model endpoint")

    def server_metadata(self) -> dict:
        return self._json_object("/v2", "server")

    def _json_object(self, path: str, what: str) -> dict:
        """The JSON object a GET of ``path`` answers; EndpointError naming ``what`` the path should be otherwise."""
        _, content = self._request("GET", path)
        not_oip = f"{self.spec.shown_url}{path} is not an Open Inference Protocol v2 {what}"
        try:
            meta = oip.loads(content)
        except EndpointError:
            raise EndpointError(f"{not_oip}: its answer is not JSON") from None
        if not isinstance(meta, dict):
            raise EndpointError(f"{not_oip}: its metadata is not a JSON object")
        return meta

    def _exchange(self, inputs: dict[str, np.ndarray], request_id: str) -> Mapping[str, np.ndarray]:
        body, headers = oip.encode_request(inputs, self.endpoint.outputs, request_id=request_id,
                                           binary=self.spec.transport == "rest-binary")
        answer_headers, content = self._request("POST", self._model_path("/infer"), body, headers)
        try:
            _, outputs = oip.decode_response(content, answer_headers.get(oip.HEADER_LENGTH))
        except EndpointError as e:
            raise EndpointError(f"endpoint returned malformed {self.endpoint.spec.output_kind}: {e}") from None
        return outputs


def connect(spec: EndpointSpec | str, **kwargs) -> EndpointOracle:
    """The oracle for ``spec``'s transport: ``GrpcOracle`` for gRPC (needs ``nnmark[grpc]``), else ``HttpOracle``.
    ``kwargs`` are those of ``HttpOracle`` (token, budget, input_shape, num_classes, seed, spec fields)."""
    spec = make_spec(spec, {k: kwargs.pop(k) for k in list(kwargs) if k in SPEC_FIELDS})
    if spec.transport == "grpc":
        from nnmark.oracles.oip_grpc import GrpcOracle

        return GrpcOracle(spec, **kwargs)
    return HttpOracle(spec, **kwargs)
