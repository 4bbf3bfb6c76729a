"""An oracle over a model behind an HTTP endpoint speaking the Open Inference Protocol v2 (JSON).

Access: probabilities. Works with ``nnmark serve`` and any OIP v2 server (KServe, Triton,
MLServer) whose model takes one FP32 input [-1, C, H, W] in [0, 1] and returns an FP32 output
named "probabilities" of shape [-1, K]. ``labels`` are the endpoint's own INT64 "label" output when
its metadata offers one (``nnmark serve`` does: a float64 model's decision can differ from the
argmax of its float32 probabilities), else the argmax of the probabilities.

Choices where the protocol leaves room:
- OIP v2 has no model-list route in its core, so the model name is an argument (default "model").
- The batch limit is the smallest of ``batch_size`` and the metadata's ``parameters.max_batch_size``
  (as ``nnmark serve`` publishes it); with neither, a whole call is one request.
- Inputs are sent as float32 (a float64 query is rounded to float32 first), each value as the
  Python float of the float32, which the server recovers exactly; answers are cast back to float32.
- Queries are counted once per input asked, before any request is sent; a request retried after a
  transient failure (connection error, timeout, 5xx, 429) is not counted again, a failed call's
  queries stay spent (the endpoint may have answered them).
- Consistency check: after each call, ``consistency_samples`` inputs drawn with the oracle's seeded
  generator are asked again in a separate request, and the oracle refuses (``EndpointError``) when
  a probability moves by more than ``consistency_atol`` (labels are not compared: a boundary
  sample's label may honestly change with the batch size). These re-queries count against the budget.
  The default tolerance is 1e-5, not 0: an honest float32 CPU model answers the same input
  differently by ~1e-8 when it sits in a batch of another size (measured for LeNet-5 and ResNet-20),
  so a bitwise check would refuse honest endpoints; ``consistency_atol=0`` is the bitwise check for
  endpoints known to be batch-invariant. An endpoint that lies consistently (e.g. replays stored
  answers) cannot be caught this way.
- An answer of the wrong shape or datatype, with non-finite values or values outside [0, 1], or with
  a row summing further than 1e-3 from 1, is refused as malformed probabilities.

Example::

    with HttpOracle("http://127.0.0.1:8000", model_name="lenet", token="s3cret", budget=1000) as oracle:
        verdict = marks.verify(oracle, key)
"""

from __future__ import annotations

import json
import time

import httpx
import torch

from nnmark.errors import EndpointError, QueryBudgetExceeded
from nnmark.oracles.base import Oracle, check_inputs

OUTPUT_NAME = "probabilities"
LABEL_NAME = "label"
ROW_SUM_TOLERANCE = 1e-3


def _message(response: httpx.Response) -> str:
    """The server's one-line ``{"error": ...}`` message, else the start of its body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return response.text[:200].strip() or response.reason_phrase


def _shape(spec) -> list | None:
    return spec if isinstance(spec, list) and all(type(s) is int for s in spec) else None


class HttpOracle(Oracle):
    """A probabilities oracle over an OIP v2 HTTP endpoint (see the module docstring for the choices).

    Args:
        url: the server's base URL, e.g. "http://127.0.0.1:8000".
        model_name: the OIP model name (default "model").
        token: bearer token sent as ``Authorization: Bearer <token>``.
        budget: the most inputs answered in total, re-queries included (None: no limit).
        timeout: seconds per request.
        retries: retries after a transient failure, with back-off ``backoff * 2**i`` seconds;
            at most ``retries + 1`` attempts per request.
        batch_size: the most inputs per request (also bounded by the server's max_batch_size).
        consistency_check: re-ask a few inputs of every call and refuse an endpoint whose answers move.
        consistency_samples: how many inputs each call re-asks (at most the call's N).
        consistency_atol: the largest allowed change of a re-asked probability.
        seed: seeds the choice of the re-asked inputs.

    Raises ``EndpointError`` on construction when the endpoint is unreachable, not OIP v2, or
    serves a model of another input or output form.
    """

    access = "probabilities"

    def __init__(
        self,
        url: str,
        *,
        model_name: str | None = None,
        token: str | bytes | None = None,
        budget: int | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        batch_size: int | None = None,
        consistency_check: bool = True,
        consistency_samples: int = 2,
        consistency_atol: float = 1e-5,
        seed: int = 0,
    ):
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries >= 0 and backoff >= 0")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None")
        if consistency_samples < 1 or consistency_atol < 0:
            raise ValueError("consistency_samples must be >= 1 and consistency_atol >= 0")
        url = str(url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise EndpointError(f"endpoint URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.model_name = model_name or "model"
        self.retries = retries
        self.backoff = backoff
        self.consistency_check = consistency_check
        self.consistency_samples = consistency_samples
        self.consistency_atol = consistency_atol
        self._generator = torch.Generator().manual_seed(seed)
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.decode('ascii') if isinstance(token, bytes) else token}"
        self._client = httpx.Client(base_url=url, timeout=timeout, headers=headers)
        try:
            input_shape, num_classes, server_batch = self._read_metadata()
        except BaseException:
            self._client.close()
            raise
        limits = [b for b in (batch_size, server_batch) if b is not None]
        self.batch_size = min(limits) if limits else None
        super().__init__(input_shape, num_classes, budget)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> HttpOracle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _model_path(self, route: str = "") -> str:
        return f"/v2/models/{self.model_name}{route}"

    def _request(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        """One request with retries on transient failures; ``EndpointError`` on a refusal or after the last retry."""
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._client.request(
                    method, path, content=body, headers={"Content-Type": "application/json"} if body else None
                )
            except httpx.TimeoutException:
                failure = f"no answer within {self._client.timeout.read} s"
                continue
            except httpx.TransportError as e:
                failure = f"{type(e).__name__}: {e}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                failure = f"HTTP {response.status_code}: {_message(response)}"
                continue
            if response.status_code >= 400:
                raise EndpointError(
                    f"endpoint {self.url}{path} refused the request (HTTP {response.status_code}): {_message(response)}"
                )
            return response
        raise EndpointError(f"endpoint {self.url}{path} failed {self.retries + 1} times; last: {failure}")

    def _read_metadata(self) -> tuple[tuple[int, int, int], int, int | None]:
        """(C, H, W), K and the server's max batch (or None) from ``GET /v2/models/{name}``."""
        path = self._model_path()
        response = self._request("GET", path)
        not_oip = f"{self.url}{path} is not an Open Inference Protocol v2 model endpoint"
        try:
            meta = response.json()
        except ValueError:
            raise EndpointError(f"{not_oip}: its answer is not JSON") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("inputs"), list) or not isinstance(meta.get("outputs"), list):
            raise EndpointError(f"{not_oip}: its metadata has no 'inputs' and 'outputs' lists")
        inputs, outputs = meta["inputs"], meta["outputs"]
        spec_in = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], dict) else {}
        shape_in = _shape(spec_in.get("shape"))
        if spec_in.get("datatype") != "FP32" or shape_in is None or len(shape_in) != 4 or min(shape_in[1:]) < 1:
            raise EndpointError(f"model {self.model_name!r} must take one FP32 input [-1, C, H, W]; metadata says {inputs}")
        named = {o.get("name"): o for o in outputs if isinstance(o, dict)}
        spec_out = named.get(OUTPUT_NAME, {})
        shape_out = _shape(spec_out.get("shape"))
        if spec_out.get("name") != OUTPUT_NAME or spec_out.get("datatype") != "FP32" or shape_out is None \
                or len(shape_out) != 2 or shape_out[1] < 1:
            raise EndpointError(
                f"model {self.model_name!r} must return one FP32 output {OUTPUT_NAME!r} [-1, K]; metadata says {outputs}"
            )
        label = named.get(LABEL_NAME, {})
        self._outputs = [OUTPUT_NAME] + ([LABEL_NAME] if label.get("datatype") == "INT64" else [])
        self._input_name = spec_in.get("name", "input")
        params = meta.get("parameters") if isinstance(meta.get("parameters"), dict) else {}
        server_batch = params.get("max_batch_size")
        server_batch = server_batch if type(server_batch) is int and server_batch >= 1 else None
        return (shape_in[1], shape_in[2], shape_in[3]), shape_out[1], server_batch

    def _spend(self, x: torch.Tensor) -> None:
        """Count the call's inputs and its consistency re-queries, all before anything is sent."""
        check_inputs(x, self.input_shape)
        n = x.shape[0] + self._rechecks(x.shape[0])
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"query budget exceeded: {self.queries} spent + {n} asked (re-queries included) > budget {self.budget}"
            )
        self.queries += n

    def _rechecks(self, n: int) -> int:
        return min(self.consistency_samples, n) if self.consistency_check else 0

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """POST one batch (n <= batch limit) of float32 inputs; the checked (n, K) float32 probabilities and labels."""
        n = x.shape[0]
        body = {"inputs": [{"name": self._input_name, "shape": list(x.shape), "datatype": "FP32",
                            "data": x.flatten().tolist()}],
                "outputs": [{"name": name} for name in self._outputs]}
        response = self._request("POST", self._model_path("/infer"), json.dumps(body, separators=(",", ":")).encode())
        bad = "endpoint returned malformed probabilities"
        try:
            answer = response.json()
        except ValueError:
            raise EndpointError(f"{bad}: the answer is not JSON") from None
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        found = [o for o in outputs if isinstance(o, dict) and o.get("name") == OUTPUT_NAME] if isinstance(outputs, list) else []
        if len(found) != 1:
            raise EndpointError(f"{bad}: no single output named {OUTPUT_NAME!r}")
        out = found[0]
        if out.get("datatype") != "FP32" or out.get("shape") != [n, self.num_classes]:
            raise EndpointError(f"{bad}: expected FP32 of shape {[n, self.num_classes]}, "
                                f"got {out.get('datatype')!r} of shape {out.get('shape')!r}")
        data = out.get("data")
        if not isinstance(data, list) or len(data) != n * self.num_classes or not set(map(type, data)) <= {int, float}:
            raise EndpointError(f"{bad}: data is not a flat list of {n * self.num_classes} numbers")
        p = torch.tensor(data, dtype=torch.float64).to(torch.float32).reshape(n, self.num_classes)
        if not torch.isfinite(p).all() or p.min() < 0 or p.max() > 1:
            raise EndpointError(f"{bad}: values are non-finite or outside [0, 1]")
        worst = (p.double().sum(dim=1) - 1).abs().max().item()
        if worst > ROW_SUM_TOLERANCE:
            raise EndpointError(f"{bad}: a row's sum is {worst:.3g} away from 1 (tolerance {ROW_SUM_TOLERANCE:g})")
        if LABEL_NAME not in self._outputs:
            return p, p.argmax(dim=1)
        found = [o for o in outputs if isinstance(o, dict) and o.get("name") == LABEL_NAME]
        labels = found[0].get("data") if len(found) == 1 and found[0].get("shape") == [n] else None
        if not (isinstance(labels, list) and len(labels) == n and all(type(v) is int for v in labels)
                and all(0 <= v < self.num_classes for v in labels)):
            raise EndpointError(f"endpoint returned malformed labels: expected {n} class indices in [0, {self.num_classes})")
        return p, torch.tensor(labels, dtype=torch.int64)

    def _ask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = x.shape[0] if self.batch_size is None else self.batch_size
        answers = [self._infer(chunk) for chunk in x.split(step)]
        return torch.cat([p for p, _ in answers]), torch.cat([y for _, y in answers])

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x)[0]

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x)[1]

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().to("cpu", torch.float32).contiguous()
        p, labels = self._ask(x)
        m = self._rechecks(x.shape[0])
        if m:
            idx = torch.randperm(x.shape[0], generator=self._generator)[:m]
            again, _ = self._ask(x[idx])
            moved = (again - p[idx]).abs().max().item()
            if not moved <= self.consistency_atol:
                raise EndpointError(
                    f"endpoint answered the same input two different ways (max change {moved:.3g} > "
                    f"tolerance {self.consistency_atol:g}); refusing its answers"
                )
        return p, labels
