"""``nnmark serve``: the OIP v2 routes, bit-exact float32 in and out, refusals that leave the server up."""

import json
import logging
import socket

import httpx
import numpy as np
import pytest
import torch

from nnmark.errors import ArgumentError, EndpointError
from nnmark.oracles import LabelsOracle, Oracle, ProbabilitiesOracle, TorchOracle
from nnmark.serve import create_app, serving

SHAPE = (1, 28, 28)
TOKEN = b"s3cret-token"
AUTH = {"Authorization": "Bearer s3cret-token"}
MAX_BATCH = 16


class RecordingOracle(Oracle):
    """Remembers the inputs it was asked and answers a stored float32 probability table."""

    access = "probabilities"

    def __init__(self, table: torch.Tensor):
        super().__init__(SHAPE, table.shape[1])
        self.table = table
        self.seen: list[torch.Tensor] = []

    def _probabilities(self, x):
        self.seen.append(x.clone())
        return self.table[: len(x)]


class WhoAsks(RecordingOracle):
    """Logs which client each request reached it as (``for_client``: a view that shares the log)."""

    def __init__(self, table: torch.Tensor, log: list, name: str | None = None):
        super().__init__(table)
        self.log, self.name = log, name

    def for_client(self, name: str) -> "WhoAsks":
        return WhoAsks(self.table, self.log, name)

    def _probabilities(self, x):
        self.log.append(self.name)
        return super()._probabilities(x)


CLIENTS = {"alice": b"tok-alice", "bob": "tok-bob"}
"""Named clients' tokens, as bytes or text (``create_app`` takes either)."""


def body(x: torch.Tensor, **override) -> dict:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist(), **override}
    return {"inputs": [tensor]}


@pytest.fixture(scope="module")
def server_oracle(lenet):
    return TorchOracle(lenet, SHAPE)


@pytest.fixture(scope="module")
def url(server_oracle):
    with serving(create_app(server_oracle, model_name="lenet", token=TOKEN, max_batch=MAX_BATCH)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=10) as c:
        yield c


def infer(client, payload, headers=AUTH, name="lenet"):
    return client.post(f"/v2/models/{name}/infer", content=json.dumps(payload), headers=headers)


@pytest.fixture
def server_log(caplog):
    """``caplog``, also fed by ``uvicorn.error`` (which does not pass its records on to the root logger)."""
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def tracebacks(log) -> list[str]:
    """The messages of the error records and of every record with a traceback."""
    return [r.getMessage() for r in log.records if r.levelno >= logging.ERROR or r.exc_info]


def test_health_metadata_and_ready(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/lenet", headers=AUTH).json()
    assert meta["name"] == "lenet"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "label", "datatype": "INT64", "shape": [-1]}]
    assert meta["parameters"]["max_batch_size"] == MAX_BATCH
    assert client.get("/v2/models/lenet/ready", headers=AUTH).json() == {"name": "lenet", "ready": True}
    assert client.get("/v2", headers=AUTH).json()["name"] == "nnmark"
    missing = client.get("/v2/models/other", headers=AUTH)
    assert missing.status_code == 404 and "other" in missing.json()["error"]


def test_infer_returns_the_local_oracles_float32_probabilities_bit_for_bit(client, mnist, server_oracle):
    x = mnist.test.x[:MAX_BATCH]
    before = server_oracle.queries
    r = infer(client, {**body(x), "id": "req-7"})
    assert r.status_code == 200
    answer = r.json()
    assert answer["model_name"] == "lenet" and answer["id"] == "req-7"
    out, label = answer["outputs"]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [MAX_BATCH, 10]
    assert label["name"] == "label" and label["datatype"] == "INT64" and label["shape"] == [MAX_BATCH]
    p = torch.tensor(out["data"], dtype=torch.float64).float().reshape(MAX_BATCH, 10)
    local = TorchOracle(server_oracle.model, SHAPE)
    assert torch.equal(p.view(torch.int32), local.probabilities(x).view(torch.int32))
    assert label["data"] == local.labels(x).tolist()
    assert server_oracle.queries == before + MAX_BATCH


def test_float32_inputs_and_outputs_round_trip_bit_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, *SHAPE, generator=g)
    flat = x.view(-1)
    flat[:20:2] = torch.rand(10, generator=g) * 1e-6 + 0.5
    flat[1:20:2] = torch.nextafter(flat[:20:2], torch.ones(10))  # neighbours 1 ulp (~6e-8) apart
    flat[20:24] = torch.tensor([0.0, 1.0, 1e-30, 1.0 - 2**-24])
    table = torch.rand(3, 10, generator=g)
    table = table / table.sum(1, keepdim=True)
    table[0, :2] = torch.tensor([0.1, torch.nextafter(torch.tensor(0.1), torch.tensor(1.0)).item()])
    oracle = RecordingOracle(table)
    with serving(create_app(oracle, model_name="echo")) as base:
        r = httpx.post(f"{base}/v2/models/echo/infer", json=body(x))
    assert r.status_code == 200
    (seen,) = oracle.seen
    assert seen.dtype == torch.float32 and torch.equal(seen.view(torch.int32), x.view(torch.int32))
    out = torch.tensor(r.json()["outputs"][0]["data"], dtype=torch.float64).float().reshape(3, 10)
    assert torch.equal(out.view(torch.int32), table.view(torch.int32))


def good(mnist):
    return body(mnist.test.x[:2])


@pytest.mark.parametrize(
    "case, expected_status, fragment",
    [
        ("malformed-json", 400, "malformed JSON"),
        ("not-an-object", 400, "JSON object"),
        ("no-inputs", 400, "'inputs'"),
        ("missing-field", 400, "'data'"),
        ("int64", 400, "FP32"),
        ("wrong-shape", 400, "shape"),
        ("flat-shape", 400, "shape"),
        ("short-data", 400, "needs"),
        ("string-data", 400, "numbers"),
        ("ragged-nested-data", 400, "nested data"),
        ("nan", 400, "NaN"),
        ("out-of-range", 400, "[0, 1]"),
        ("too-large-batch", 413, "max_batch_size"),
        ("wrong-input-name", 400, "exactly one tensor named 'input'"),
        ("unknown-output", 400, "outputs"),
        ("unknown-model", 404, "unknown model"),
        ("missing-token", 401, "missing bearer token"),
        ("wrong-token", 401, "wrong bearer token"),
    ],
)
def test_bad_requests_get_one_line_4xx_errors_and_the_server_stays_up(client, mnist, case, expected_status, fragment):
    x = mnist.test.x[:2]
    headers, name = AUTH, "lenet"
    content = None
    payload = body(x)
    if case == "malformed-json":
        content = b'{"inputs": [{'
    elif case == "not-an-object":
        payload = [1, 2]
    elif case == "no-inputs":
        payload = {"input": []}
    elif case == "missing-field":
        del payload["inputs"][0]["data"]
    elif case == "int64":
        payload = body(x, datatype="INT64", data=[0] * x.numel())
    elif case == "wrong-shape":
        payload = body(torch.rand(1, 3, 28, 28))
    elif case == "flat-shape":
        payload = body(x, shape=[2 * 784])
    elif case == "short-data":
        payload["inputs"][0]["data"] = payload["inputs"][0]["data"][:-1]
    elif case == "string-data":
        payload["inputs"][0]["data"][5] = "0.5"
    elif case == "ragged-nested-data":
        payload = body(x, data=x.reshape(2, -1).tolist()[:1])
    elif case == "nan":
        content = json.dumps(payload).replace("0.0,", "NaN,", 1).encode()
    elif case == "out-of-range":
        payload["inputs"][0]["data"][3] = 1.0000001
    elif case == "too-large-batch":
        payload = body(mnist.test.x[: MAX_BATCH + 1])
    elif case == "wrong-input-name":
        payload = body(x, name="images")
    elif case == "unknown-output":
        payload["outputs"] = [{"name": "logits"}]
    elif case == "unknown-model":
        name = "resnet"
    elif case == "missing-token":
        headers = {}
    elif case == "wrong-token":
        headers = {"Authorization": "Bearer s3cret-tokem"}
    if content is None:
        content = json.dumps(payload).encode()
    r = client.post(f"/v2/models/{name}/infer", content=content, headers=headers)
    assert r.status_code == expected_status, r.text
    error = r.json()["error"]
    assert fragment in error and "\n" not in error
    if expected_status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    ok = infer(client, good(mnist))
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [2, 10]


def test_unknown_routes_and_methods_answer_json_errors(client):
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/v2/models/lenet/infer", headers=AUTH).status_code == 405
    assert client.get("/docs").status_code == 404


def test_body_over_the_limit_is_refused_before_parsing(lenet, mnist):
    app = create_app(TorchOracle(lenet, SHAPE), model_name="lenet", max_body_bytes=4096)
    with serving(app) as base, httpx.Client(base_url=base) as c:
        r = c.post("/v2/models/lenet/infer", json=body(mnist.test.x[:1]))
        assert r.status_code == 413 and "4096 bytes" in r.json()["error"]
        assert c.get("/v2/health/live").json() == {"live": True}


def test_spent_server_budget_is_a_403(lenet, mnist):
    app = create_app(TorchOracle(lenet, SHAPE, budget=3), model_name="lenet")
    with serving(app) as base, httpx.Client(base_url=base) as c:
        assert c.post("/v2/models/lenet/infer", json=body(mnist.test.x[:2])).status_code == 200
        r = c.post("/v2/models/lenet/infer", json=body(mnist.test.x[:2]))
        assert r.status_code == 403 and "budget" in r.json()["error"]


def test_logits_output_counts_queries_and_matches_local_logits(lenet, mnist):
    oracle = TorchOracle(lenet, SHAPE)
    x = mnist.test.x[:4]
    with serving(create_app(oracle, model_name="lenet", output="logits")) as base:
        meta = httpx.get(f"{base}/v2/models/lenet").json()
        r = httpx.post(f"{base}/v2/models/lenet/infer", json=body(x))
    assert meta["outputs"][0]["name"] == "logits"
    out = r.json()["outputs"][0]
    assert out["name"] == "logits"
    logits = torch.tensor(out["data"], dtype=torch.float64).float().reshape(4, 10)
    assert oracle.queries == 4
    assert torch.equal(logits, oracle.logits(x))


def test_startup_refuses_what_it_cannot_serve(lenet):
    local = TorchOracle(lenet, SHAPE)
    with pytest.raises(ValueError, match="no logits"):
        create_app(ProbabilitiesOracle(local), model_name="m", output="logits")
    with pytest.raises(ValueError, match="labels only"):
        create_app(LabelsOracle(local), model_name="m")
    with pytest.raises(EndpointError, match="HTTP header cannot carry"):
        create_app(local, model_name="m", token=b"two\nlines")
    with pytest.raises(ValueError, match="output"):
        create_app(local, model_name="m", output="label")
    with pytest.raises(ValueError, match="max_batch"):
        create_app(local, model_name="m", max_batch=0)


def test_binary_requests_and_answers_and_nested_data(client, mnist, server_oracle):
    from nnmark.oracles import oip

    x = mnist.test.x[:3]
    local = TorchOracle(server_oracle.model, SHAPE)
    content, headers = oip.encode_request({"input": x.numpy()}, ["probabilities", "label"], request_id="b-1",
                                          binary=True)
    r = client.post("/v2/models/lenet/infer", content=content, headers={**AUTH, **headers})
    assert r.status_code == 200 and oip.HEADER_LENGTH.lower() in r.headers
    rid, outputs = oip.decode_response(r.content, r.headers[oip.HEADER_LENGTH])
    assert rid == "b-1" and torch.equal(torch.from_numpy(outputs["probabilities"]), local.probabilities(x))
    assert outputs["label"].tolist() == local.labels(x).tolist()
    nested = infer(client, {"inputs": [{"name": "input", "shape": [3, *SHAPE], "datatype": "FP32", "data": x.tolist()}],
                            "outputs": [{"name": "label"}]})
    assert nested.status_code == 200 and [o["name"] for o in nested.json()["outputs"]] == ["label"]
    assert nested.json()["outputs"][0]["data"] == local.labels(x).tolist()


def test_overflowing_numbers_are_a_400_and_keep_the_connection(client, mnist):
    for bad in (b"9" * 400, b"1e999", b"-Infinity"):
        content = json.dumps(body(mnist.test.x[:1])).encode().replace(b"0.0,", bad + b",", 1)
        r = client.post("/v2/models/lenet/infer", content=content, headers=AUTH)
        assert r.status_code == 400 and r.headers.get("connection") != "close", (bad, r.text)
    assert infer(client, good(mnist)).status_code == 200


def test_405_names_the_allowed_methods(client):
    r = client.get("/v2/models/lenet/infer", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def _connect(url: str) -> socket.socket:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _read_answer(s: socket.socket) -> bytes:
    """One HTTP answer: its headers, then the body of content-length bytes."""
    answer = b""
    for _ in range(16):
        answer += s.recv(4096)
        headers, _, rest = answer.partition(b"\r\n\r\n")
        length = [int(v) for k, _, v in (h.partition(b":") for h in headers.split(b"\r\n")[1:])
                  if k.lower() == b"content-length"]
        if length and len(rest) >= length[0]:
            break
    return answer


def _raw_request(url: str, head: bytes, body: bytes, read: bool):
    with _connect(url) as s:
        s.sendall(head + body)
        return _read_answer(s) if read else None


def test_slow_bodies_get_408_and_a_client_that_leaves_leaves_no_traceback(lenet, mnist, server_log):
    app = create_app(TorchOracle(lenet, SHAPE), model_name="lenet", body_read_seconds=0.3)
    head = (b"POST /v2/models/lenet/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n")
    with serving(app) as base:
        answer = _raw_request(base, head, b'{"inputs"', read=True)
        _raw_request(base, head, b'{"inputs"', read=False)  # hangs up with 91 bytes unsent
        assert httpx.post(f"{base}/v2/models/lenet/infer", json=body(mnist.test.x[:1])).status_code == 200
    assert answer.startswith(b"HTTP/1.1 408") and b"not received within 0.3 s" in answer
    assert not tracebacks(server_log)


HUGE = 2**62


def _infer_head(content: bytes, headers: dict[str, bytes]) -> bytes:
    lines = [b"POST /v2/models/lenet/infer HTTP/1.1", b"Host: x", b"Authorization: " + AUTH["Authorization"].encode(),
             b"Content-Length: %d" % len(content), *(k.encode() + b": " + v for k, v in headers.items())]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _binary_request(shape: list[int], size: int, data: bytes, length: bytes | None = None) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    return header + data, {"Inference-Header-Content-Length": length or str(len(header)).encode()}


def _json_request(shape: list[int], data: list) -> tuple[bytes, dict]:
    return json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}).encode(), {}


PIXELS = [0.5] * 784


@pytest.mark.parametrize("request_, fragment", [
    (_json_request([0, HUGE, HUGE], []), "holds more values than its message"),
    (_json_request([2**40, *SHAPE], []), "holds more values than its message"),
    (_json_request([-1, *SHAPE], PIXELS), "sizes >= 0"),
    (_json_request([3, *SHAPE], PIXELS * 2), "has 1568 values, its shape [3, 1, 28, 28] needs 2352"),
    (_json_request([1, 2**32, 2**32, 1], PIXELS), "holds more values than its message"),
    (_binary_request([0, HUGE, HUGE], 0, b""), "holds more values than its message"),
    (_binary_request([2**40, *SHAPE], 3136, b"\0" * 3136), "holds more values than its message"),
    (_binary_request([1, *SHAPE], 3136, b"\0" * 1000), "do not fit its shape"),
    (_binary_request([1, *SHAPE], 8, b"\0" * 3136), "do not fit its shape"),
    (_binary_request([1, *SHAPE], 3136, b"\0" * 3136, length="\u00b2".encode("latin-1")), "does not fit a body"),
    (_binary_request([1, *SHAPE], 3136, b"\0" * 3136, length=b"9" * 5000), "does not fit a body"),
    (_binary_request([1, *SHAPE], 3136, b"\0" * 3136, length=b"99999"), "does not fit a body"),
    (_binary_request([1, *SHAPE], 3136, b"\0" * 3136, length=b"-1"), "does not fit a body"),
], ids=["json-shape-overflows", "json-count-beyond-the-body", "json-negative-shape", "json-shape-and-data-disagree",
        "json-int64-overflowing-shape", "binary-shape-overflows", "binary-count-beyond-the-body",
        "binary-size-beyond-the-body", "binary-size-and-shape-disagree", "binary-length-superscript-two",
        "binary-length-5000-digits", "binary-length-beyond-the-body", "binary-length-negative"])
def test_malformed_shapes_and_lengths_are_a_quiet_400_on_a_connection_that_still_works(url, mnist, server_log,
                                                                                      request_, fragment):
    content, headers = request_
    good = json.dumps(body(mnist.test.x[:1])).encode()
    with _connect(url) as s:
        s.sendall(_infer_head(content, headers) + content)
        refused = _read_answer(s)
        s.sendall(_infer_head(good, {}) + good)  # the same connection answers the next request
        answered = _read_answer(s)
    head, _, error = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" not in head.lower(), refused
    message = json.loads(error)["error"]
    assert fragment in message and "\n" not in message
    assert answered.startswith(b"HTTP/1.1 200 ") and b'"shape":[1,10]' in answered
    assert not tracebacks(server_log)


def test_a_content_length_that_is_not_ascii_digits_is_a_quiet_400(url, client, mnist, server_log):
    with _connect(url) as s:  # uvicorn refuses it before the app, and closes the connection
        s.sendall(b"POST /v2/models/lenet/infer HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n")
        assert _read_answer(s).startswith(b"HTTP/1.1 400 ")
    assert infer(client, good(mnist)).status_code == 200  # another connection works
    assert not tracebacks(server_log)


def test_label_only_output_and_the_model_card(lenet, mnist):
    app = create_app(LabelsOracle(TorchOracle(lenet, SHAPE)), model_name="m", output="labels", card={"data": "mnist5k"})
    with serving(app) as base:
        meta = httpx.get(f"{base}/v2/models/m/versions/1").json()
        r = httpx.post(f"{base}/v2/models/m/versions/1/infer", json=body(mnist.test.x[:2]))
    assert meta["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]}]
    card = ("input_shape", "num_classes", "layout", "normalize", "output_kind", "data")
    assert {k: meta["parameters"][k] for k in card} == {
        "input_shape": [1, 28, 28], "num_classes": 10, "layout": "NCHW", "normalize": "none",
        "output_kind": "labels", "data": "mnist5k"}
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]


def test_run_refuses_an_open_host_without_a_token_and_a_taken_port(lenet):
    from nnmark.serve import check_exposure, run

    app = create_app(TorchOracle(lenet, SHAPE), model_name="m")
    with pytest.raises(EndpointError, match="refusing to serve 0.0.0.0 without a token"):
        run(app, host="0.0.0.0", port=0)
    with pytest.warns(UserWarning, match="WITHOUT a token"):
        check_exposure("0.0.0.0", None, insecure_no_token=True)
    check_exposure("127.0.0.1", None, insecure_no_token=False)
    check_exposure("::1", None, insecure_no_token=False)
    with serving(app) as base, pytest.raises(EndpointError, match="cannot serve on 127.0.0.1"):
        run(app, port=int(base.rsplit(":", 1)[1]))


# --- property: the request decoder answers 200 to every valid request and 4xx to every malformed one ----------

PROPERTY_EXAMPLES = 150
TINY = (1, 3, 3)


@pytest.fixture(scope="module")
def tiny_client():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 4))
    with serving(create_app(TorchOracle(model, TINY), model_name="t", max_batch=4)) as base, \
            httpx.Client(base_url=base, timeout=10) as c:
        yield c


def _valid_requests():
    from hypothesis import strategies as st

    pixel = st.floats(0, 1, width=32)

    @st.composite
    def build(draw):
        from nnmark.oracles import oip

        n = draw(st.integers(1, 4))
        x = np.array(draw(st.lists(pixel, min_size=n * 9, max_size=n * 9)), np.float32).reshape(n, *TINY)
        outputs = draw(st.sampled_from([None, ["probabilities"], ["label"], ["probabilities", "label"]]))
        rid = draw(st.none() | st.text(max_size=8))
        if draw(st.booleans()):
            content, headers = oip.encode_request({"input": x}, outputs or [], request_id=rid or "", binary=True)
            return content, headers
        data = x.tolist() if draw(st.booleans()) else x.reshape(-1).tolist()
        req = {"inputs": [{"name": "input", "shape": [n, *TINY], "datatype": "FP32", "data": data}]}
        if outputs is not None:
            req["outputs"] = [{"name": o} for o in outputs]
        if rid is not None:
            req["id"] = rid
        return json.dumps(req).encode(), {"Content-Type": "application/json"}

    return build()


def _malformed_requests():
    from hypothesis import strategies as st

    base = {"inputs": [{"name": "input", "shape": [1, *TINY], "datatype": "FP32", "data": [0.5] * 9}]}
    corruptions = st.sampled_from([
        lambda r: r.pop("inputs"), lambda r: r["inputs"][0].pop("data"), lambda r: r["inputs"][0].pop("shape"),
        lambda r: r["inputs"][0].update(shape=[1, 3, 3]), lambda r: r["inputs"][0].update(shape=[-1, *TINY]),
        lambda r: r["inputs"][0].update(shape=[0, HUGE, HUGE], data=[]),
        lambda r: r["inputs"][0].update(shape=[2**32, 2**32, 1, 1]),
        lambda r: r["inputs"][0].update(shape=[5, *TINY], data=[0.5] * 45),
        lambda r: r["inputs"][0].update(datatype="FP64"), lambda r: r["inputs"][0].update(datatype="STRING"),
        lambda r: r["inputs"][0].update(name="x"), lambda r: r["inputs"][0]["data"].__setitem__(0, 1.5),
        lambda r: r["inputs"][0]["data"].__setitem__(0, -0.25), lambda r: r["inputs"][0]["data"].__setitem__(0, "0.5"),
        lambda r: r["inputs"][0]["data"].__setitem__(0, True), lambda r: r["inputs"][0]["data"].__setitem__(0, 10**30),
        lambda r: r["inputs"][0]["data"].pop(), lambda r: r["inputs"][0].update(data=[[0.5] * 9]),
        lambda r: r.update(outputs=[{"name": "logits"}]), lambda r: r.update(outputs="label"), lambda r: r.update(id=7),
        lambda r: r.update(parameters={"binary_data_output": "yes"}),
        lambda r: r["inputs"].append(dict(r["inputs"][0])),
        lambda r: r["inputs"][0].update(parameters={"binary_data_size": 36}),
    ])

    @st.composite
    def build(draw):
        import copy

        req = copy.deepcopy(base)
        draw(corruptions)(req)
        content = json.dumps(req).encode()
        if draw(st.booleans()):  # and/or damage the bytes themselves
            cut = draw(st.integers(0, len(content) - 1))
            content = draw(st.sampled_from([content[:cut], content[:cut] + b"NaN" + content[cut:],
                                            content[:cut] + b"9" * 400, content + b"\x00"]))
        return content, {"Content-Type": "application/json"}

    return build() | st.binary(max_size=64).map(lambda b: (b, {"Content-Type": "application/json"})) | \
        st.sampled_from([(json.dumps(base).encode(), {"Inference-Header-Content-Length": "9999"}),
                         (json.dumps(base).encode(), {"Inference-Header-Content-Length": "-1"}),
                         (json.dumps(base).encode(), {"Inference-Header-Content-Length": "\u00b2".encode("latin-1")})])


@pytest.mark.parametrize("kind, expected", [("valid", 200), ("malformed", 400)],
                         ids=[f"valid-{PROPERTY_EXAMPLES}-examples", f"malformed-{PROPERTY_EXAMPLES}-examples"])
def test_request_decoding_property(tiny_client, kind, expected):
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_valid_requests() if kind == "valid" else _malformed_requests())
    def check(request):
        content, headers = request
        r = tiny_client.post("/v2/models/t/infer", content=content, headers=headers)
        if expected == 200:
            assert r.status_code == 200, r.text
        else:
            assert 400 <= r.status_code < 500 and r.status_code != 404, (content[:200], r.status_code, r.text)
            assert "\n" not in r.json()["error"]

    check()


def test_named_clients_each_reach_the_oracle_as_themselves_and_no_other_token_passes(mnist):
    log = []
    app = create_app(WhoAsks(torch.full((4, 10), 0.1), log), model_name="m", clients=CLIENTS)
    x = mnist.test.x[:2]
    with serving(app) as base, httpx.Client(base_url=base, timeout=10) as c:
        for name in ("bob", "alice", "bob"):
            r = infer(c, body(x), headers={"Authorization": f"Bearer tok-{name}"}, name="m")
            assert r.status_code == 200, r.text
        for headers, fragment in (({"Authorization": "Bearer tok-carol"}, "wrong bearer token"), ({}, "missing"),
                                  ({"Authorization": "Bearer tok-alice tok-bob"}, "wrong bearer token")):
            r = infer(c, body(x), headers=headers, name="m")
            assert r.status_code == 401 and fragment in r.json()["error"]
        assert c.get("/v2/models/m", headers={"Authorization": "Bearer tok-alice"}).status_code == 200
        assert c.get("/v2", headers={"Authorization": "Bearer tok-x"}).status_code == 401
    assert log == ["bob", "alice", "bob"]
    assert app.state.clients == {"alice": b"tok-alice", "bob": b"tok-bob"} and app.state.token is None


@pytest.mark.parametrize("options, fragment", [
    ({"token": b"t", "clients": CLIENTS}, "not both"),
    ({"clients": {"alice": b"same", "bob": b"same"}}, "share a token"),
    ({"clients": {"al ice": b"t"}}, "client name"),
    ({"clients": {"alice": b"t\nx"}}, "client 'alice''s token holds"),
])
def test_named_clients_are_checked_when_the_app_is_made(options, fragment):
    with pytest.raises((ArgumentError, EndpointError), match=fragment):
        create_app(WhoAsks(torch.full((4, 10), 0.1), []), model_name="m", **options)
