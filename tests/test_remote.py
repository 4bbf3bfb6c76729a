"""``HttpOracle``: same answers and verdicts as a local oracle, retries, time-outs, budget, lying endpoints."""

import asyncio
import json
import time

import pytest
import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from nnmark import marks
from nnmark.attacks import weight_noise
from nnmark.errors import EndpointError, QueryBudgetExceeded
from nnmark.marks.integrity import dbi
from nnmark.oracles import LabelsOracle, TorchOracle
from nnmark.oracles.remote import HttpOracle
from nnmark.serve import create_app, serving
from ports import free_port

SHAPE = (1, 28, 28)
FAST = {"backoff": 0.01, "timeout": 5.0}


class CountingOracle(TorchOracle):
    """A local oracle that records the batch size of every call the server makes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def _predict(self, x):
        self.batches.append(len(x))
        return super()._predict(x)


@pytest.fixture(scope="module")
def served(lenet):
    oracle = CountingOracle(lenet, SHAPE)
    with serving(create_app(oracle, model_name="lenet", token=b"tok", max_batch=16)) as url:
        yield url, oracle


def remote(url, **kwargs):
    return HttpOracle(url, model_name="lenet", token="tok", **{**FAST, **kwargs})


def test_probabilities_over_http_equal_the_local_oracles(served, lenet, mnist):
    url, server_oracle = served
    x = mnist.test.x[:40]
    server_oracle.batches.clear()
    with remote(url) as oracle:
        assert (oracle.input_shape, oracle.num_classes, oracle.batch_size) == (SHAPE, 10, 16)
        p = oracle.probabilities(x)
        labels = oracle.labels(x)
        assert oracle.queries == 2 * (40 + 2)
    # the server's max_batch_size of 16 splits 40 inputs into 16 + 16 + 8, then 2 re-queries
    assert server_oracle.batches == [16, 16, 8, 2] * 2
    local = torch.cat([TorchOracle(lenet, SHAPE).probabilities(c) for c in x.split(16)])
    assert p.dtype == torch.float32 and torch.equal(p.view(torch.int32), local.view(torch.int32))
    assert torch.equal(labels, local.argmax(1))


@pytest.fixture(scope="module")
def dbi_key(lenet, mnist):
    return dbi.create(TorchOracle(lenet, SHAPE), mnist.train.x[:10], itr=50, eps=1e-3)


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_dbi_key_through_http_gives_the_local_verdict(lenet, dbi_key, noise):
    model = weight_noise(lenet, noise, seed=0) if noise else lenet
    local = marks.verify(LabelsOracle(TorchOracle(model, SHAPE)), dbi_key)
    assert local.decision == ("tampered" if noise else "intact")
    with serving(create_app(TorchOracle(model, SHAPE), model_name="lenet", token=b"tok")) as url:
        with remote(url) as oracle:
            over_http = marks.verify(LabelsOracle(oracle), dbi_key)
            direct = marks.verify(oracle, dbi_key)
            assert oracle.queries == 2 * (10 + 2)
    for verdict in (over_http, direct):
        assert (verdict.decision, verdict.passed, verdict.flipped, verdict.statistic) == (
            local.decision, local.passed, local.flipped, local.statistic)


def fake_endpoint(infer, classes: int = 10, max_batch: int | None = None, output: str = "probabilities") -> FastAPI:
    """A minimal OIP v2 app whose infer route is ``infer(request_json, calls) -> Response``."""
    app = FastAPI()
    app.state.calls = 0
    params = {} if max_batch is None else {"parameters": {"max_batch_size": max_batch}}

    @app.get("/v2/models/{name}")
    async def metadata(name: str):
        return {"name": name, "platform": "test", **params,
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *SHAPE]}],
                "outputs": [{"name": output, "datatype": "FP32", "shape": [-1, classes]}]}

    @app.post("/v2/models/{name}/infer")
    async def infer_route(request: Request):
        app.state.calls += 1
        return await infer(await request.json(), app.state.calls)

    return app


def uniform_answer(req: dict, classes: int = 10) -> dict:
    n = req["inputs"][0]["shape"][0]
    return {"model_name": "lenet", "outputs": [{"name": "probabilities", "shape": [n, classes], "datatype": "FP32",
                                                "data": [1.0 / classes] * (n * classes)}]}


def test_retries_transient_503s_then_succeeds(mnist):
    async def flaky(req, calls):
        if calls <= 2:
            return JSONResponse({"error": "warming up"}, status_code=503)
        return JSONResponse(uniform_answer(req))

    app = fake_endpoint(flaky)
    with serving(app) as url, HttpOracle(url, retries=3, **FAST) as oracle:
        p = oracle.probabilities(mnist.test.x[:3])
    assert p.shape == (3, 10) and app.state.calls == 4  # 2 failures, the answer, the re-query


def test_gives_up_after_its_retries_and_does_not_retry_a_refusal(mnist):
    async def down(req, calls):
        return JSONResponse({"error": "overloaded"}, status_code=503)

    async def refuses(req, calls):
        return JSONResponse({"error": "this input is not allowed"}, status_code=422)

    app = fake_endpoint(down)
    with serving(app) as url, HttpOracle(url, retries=2, **FAST) as oracle:
        with pytest.raises(EndpointError, match=r"failed 3 times; last: HTTP 503: overloaded"):
            oracle.probabilities(mnist.test.x[:3])
    assert app.state.calls == 3
    app = fake_endpoint(refuses)
    with serving(app) as url, HttpOracle(url, retries=2, **FAST) as oracle:
        with pytest.raises(EndpointError, match=r"HTTP 422\): this input is not allowed"):
            oracle.probabilities(mnist.test.x[:3])
    assert app.state.calls == 1


def test_times_out_against_a_sleeping_server(mnist):
    async def sleepy(req, calls):
        await asyncio.sleep(1.0)
        return JSONResponse(uniform_answer(req))

    app = fake_endpoint(sleepy)
    with serving(app) as url, HttpOracle(url, timeout=0.2, retries=1, backoff=0.01) as oracle:
        start = time.perf_counter()
        with pytest.raises(EndpointError, match=r"failed 2 times; last: no answer within 0.2 s"):
            oracle.probabilities(mnist.test.x[:2])
        assert time.perf_counter() - start < 0.9
    assert app.state.calls == 2


def test_budget_is_enforced_before_anything_is_sent(mnist):
    async def answer(req, calls):
        return JSONResponse(uniform_answer(req))

    app = fake_endpoint(answer)
    with serving(app) as url, HttpOracle(url, budget=10, **FAST) as oracle:
        with pytest.raises(QueryBudgetExceeded, match=r"\+ 11 asked"):
            oracle.labels(mnist.test.x[:9])  # 9 + 2 re-queries > 10
        assert oracle.queries == 0 and app.state.calls == 0
        oracle.labels(mnist.test.x[:8])
        assert oracle.queries == 10 and app.state.calls == 2
        with pytest.raises(QueryBudgetExceeded):
            oracle.labels(mnist.test.x[:1])
        assert app.state.calls == 2
    with serving(app) as url, HttpOracle(url, budget=10, consistency_check=False, **FAST) as oracle:
        oracle.labels(mnist.test.x[:10])
        assert oracle.queries == 10


def test_refuses_a_lying_endpoint_that_answers_the_same_input_two_ways(lenet, mnist):
    honest = TorchOracle(lenet, SHAPE)
    g = torch.Generator().manual_seed(0)

    async def noisy(req, calls):
        x = torch.tensor(req["inputs"][0]["data"]).reshape(req["inputs"][0]["shape"])
        p = honest.probabilities(x) + 1e-3 * torch.rand(len(x), 10, generator=g)
        p = p / p.sum(1, keepdim=True)
        return JSONResponse({"outputs": [{"name": "probabilities", "shape": list(p.shape), "datatype": "FP32",
                                          "data": p.flatten().tolist()}]})

    with serving(fake_endpoint(noisy)) as url:
        with HttpOracle(url, **FAST) as oracle, pytest.raises(EndpointError, match="two different ways"):
            oracle.labels(mnist.test.x[:20])
        with HttpOracle(url, consistency_check=False, **FAST) as oracle:
            assert oracle.labels(mnist.test.x[:20]).shape == (20,)


@pytest.mark.parametrize("lie", ["row-sum", "nan", "shape", "datatype", "not-json"])
def test_refuses_malformed_probabilities(mnist, lie):
    async def broken(req, calls):
        answer = uniform_answer(req)
        out = answer["outputs"][0]
        if lie == "row-sum":
            out["data"] = [0.2] * len(out["data"])
        elif lie == "nan":
            return Response(JSONResponse(answer).body.replace(b"0.1,", b"NaN,", 1), media_type="application/json")
        elif lie == "shape":
            out["shape"] = [out["shape"][0], 5]
        elif lie == "datatype":
            out["datatype"] = "INT64"
        elif lie == "not-json":
            return Response(b"<html>oops</html>", media_type="text/html")
        return JSONResponse(answer)

    with serving(fake_endpoint(broken)) as url, HttpOracle(url, **FAST) as oracle:
        with pytest.raises(EndpointError, match="malformed probabilities"):
            oracle.probabilities(mnist.test.x[:3])


HUGE = 2**62


def _binary_answer(shape: list[int], data: bytes, length: bytes | None = None) -> Response:
    header = json.dumps({"outputs": [{"name": "probabilities", "shape": shape, "datatype": "FP32",
                                      "parameters": {"binary_data_size": len(data)}}]}).encode()
    return Response(header + data, headers={"Inference-Header-Content-Length": (length or str(len(header)).encode())
                                            .decode("latin-1")}, media_type="application/octet-stream")


def _json_answer(shape: list[int], n_values: int) -> Response:
    return JSONResponse({"outputs": [{"name": "probabilities", "shape": shape, "datatype": "FP32",
                                      "data": [0.1] * n_values}]})


@pytest.mark.parametrize("answer, fragment", [
    (_json_answer([0, HUGE, HUGE], 0), "holds more values than its message"),
    (_json_answer([2**32, 2**32], 0), "holds more values than its message"),
    (_json_answer([-2, 10], 20), "sizes >= 0"),
    (_json_answer([3, 10], 30), "expected a float tensor of shape [2, 10], got float32 of shape [3, 10]"),
    (_json_answer([2, 10], 19), "has 19 values, its shape [2, 10] needs 20"),
    (_binary_answer([0, HUGE, HUGE], b""), "holds more values than its message"),
    (_binary_answer([2, 10], bytes(80), length="\u00b2".encode("latin-1")), "does not fit a body"),
    (_binary_answer([2, 10], bytes(80), length=b"9" * 5000), "does not fit a body"),
    (_binary_answer([2, 10], bytes(80), length=b"4000"), "does not fit a body"),
    (_binary_answer([3, 10], bytes(80)), "do not fit its shape"),
], ids=["json-shape-overflows", "json-int64-overflowing-shape", "json-negative-shape", "json-not-the-batch-asked",
        "json-shape-and-data-disagree", "binary-shape-overflows", "binary-length-superscript-two",
        "binary-length-5000-digits", "binary-length-beyond-the-body", "binary-size-and-shape-disagree"])
def test_refuses_malformed_answer_shapes_in_one_line(mnist, answer, fragment):
    async def malformed(req, calls):
        return answer

    with serving(fake_endpoint(malformed)) as url, HttpOracle(url, retries=0, **FAST) as oracle:
        with pytest.raises(EndpointError, match="^endpoint returned malformed probabilities: [^\n]*$") as e:
            oracle.probabilities(mnist.test.x[:2])
    assert fragment in str(e.value)


@pytest.mark.parametrize("max_batch", [-1, 1e12, "abc", 2**31, True])
def test_a_bad_max_batch_size_is_refused_in_one_line(max_batch):
    async def never(req, calls):
        raise AssertionError("not reached")

    with serving(fake_endpoint(never, max_batch=max_batch)) as url:
        with pytest.raises(EndpointError, match="^[^\n]*metadata parameter max_batch_size must be an integer in "
                                                "\\[0, 2147483647\\], got [^\n]*$"):
            HttpOracle(url, **FAST)


def test_max_batch_size_0_leaves_the_batch_to_the_inputs_first_dimension(mnist):
    async def uniform(req, calls):
        return JSONResponse(uniform_answer(req))

    app = fake_endpoint(uniform, max_batch=0)  # its input shape is [-1, 1, 28, 28]: any number per request
    with serving(app) as url, HttpOracle(url, **FAST) as oracle:
        assert oracle.batch_size is None and oracle.probabilities(mnist.test.x[:20]).shape == (20, 10)
    assert app.state.calls == 2  # the 20 inputs in one request, then the re-query


def test_construction_refuses_what_is_not_a_matching_oip_model(served):
    url, _ = served
    with pytest.raises(EndpointError, match="failed 1 times; last: ConnectError"):
        HttpOracle(f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.raises(EndpointError, match=r"http\(s\)://host\[:port\] or grpc://"):
        HttpOracle("ftp://example.org")
    with pytest.raises(EndpointError, match=r"HTTP 401\): missing bearer token"):
        HttpOracle(url, model_name="lenet")
    with pytest.raises(EndpointError, match=r"HTTP 404\): unknown model 'model'"):
        HttpOracle(url, token="tok")

    async def never(req, calls):
        raise AssertionError("not reached")

    with serving(fake_endpoint(never, output="output__0")) as other:
        with pytest.raises(EndpointError, match="none is named 'probabilities' or 'logits': pass --output-name"):
            HttpOracle(other)
        with pytest.raises(EndpointError, match="whether output 'output__0' holds probabilities or logits"):
            HttpOracle(other, output_name="output__0")
    page = FastAPI()
    page.get("/v2/models/{name}")(lambda name: Response(b"<html></html>", media_type="text/html"))
    with serving(page) as other:
        with pytest.raises(EndpointError, match="not an Open Inference Protocol v2 model endpoint"):
            HttpOracle(other)


def test_a_smaller_batch_size_argument_wins_and_float64_queries_go_as_float32(served, lenet, mnist):
    url, server_oracle = served
    server_oracle.batches.clear()
    x = mnist.test.x[:10].double()
    with remote(url, batch_size=4, consistency_check=False) as oracle:
        p = oracle.probabilities(x)
    assert server_oracle.batches == [4, 4, 2]
    local = torch.cat([TorchOracle(lenet, SHAPE).probabilities(c) for c in x.float().split(4)])
    assert torch.equal(p, local)


def test_binary_transport_gives_the_json_answers_and_sends_fewer_bytes(served, mnist):
    url, _ = served
    x = mnist.test.x[:20]
    sizes = {}
    answers = {}
    for transport in ("rest", "rest-binary"):
        with remote(url, transport=transport, consistency_check=False) as oracle:
            sent = []
            oracle._client.event_hooks["request"] = [lambda r: sent.append(len(r.content))]
            answers[transport] = oracle.predict(x)
            sizes[transport] = sum(sent)
    assert torch.equal(answers["rest"][0], answers["rest-binary"][0])
    assert torch.equal(answers["rest"][1], answers["rest-binary"][1])
    assert sizes["rest-binary"] < min(sizes["rest"], 4 * x.numel() + 1000), sizes  # 4 bytes a value + its header


def shaped_endpoint(model, *, layout="NCHW", dtype="FP32", kind="probabilities", name="probabilities",
                    label_shape=None, mean=0.0, std=1.0, seen=None) -> FastAPI:
    """An OIP v2 app shaped as real deployments are: NHWC, UINT8, server-side normalisation, logits or
    labels only, a label output of shape [N, 1]; it answers with ``model`` (NCHW float in [0, 1] after
    its own de-normalisation) and records every request body in ``seen``."""
    from nnmark.oracles import oip

    app = FastAPI()
    dims = [-1, *SHAPE] if layout == "NCHW" else [-1, SHAPE[1], SHAPE[2], SHAPE[0]]
    outputs = [] if kind == "labels" else [{"name": name, "datatype": "FP32", "shape": [-1, 10]}]
    if label_shape is not None:
        outputs.append({"name": "label", "datatype": "INT64", "shape": label_shape})

    @app.get("/v2/models/{m}")
    async def metadata(m: str):
        return {"name": m, "inputs": [{"name": "input__0", "datatype": dtype, "shape": dims}], "outputs": outputs}

    @app.post("/v2/models/{m}/infer")
    async def infer(request: Request, m: str):
        body = await request.body()
        req = oip.decode_request(body, request.headers.get(oip.HEADER_LENGTH))
        if seen is not None:
            seen.append(req)
        x = torch.from_numpy(req.inputs["input__0"].astype("float64"))
        x = x / 255 if dtype == "UINT8" else x * std + mean
        if layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        z = model(x.float().clamp(0, 1)).detach()
        answers = {name: (z if kind == "logits" else torch.softmax(z, 1)).numpy(),
                   "label": z.argmax(1, keepdim=label_shape == [-1, 1]).numpy()}
        wanted = req.outputs or list(answers)
        content, headers = oip.encode_response(m, {k: answers[k] for k in wanted}, request_id=req.id,
                                               binary={k for k in wanted if req.wants_binary(k)})
        return Response(content, headers=headers)

    return app


@pytest.mark.parametrize("shape, spec", [
    ({"kind": "logits", "name": "output__0"}, {"output_name": "output__0", "output_kind": "logits"}),
    ({"layout": "NHWC", "dtype": "UINT8", "label_shape": [-1, 1]}, {}),
    ({"mean": 0.1307, "std": 0.3081}, {"normalize": "0.1307,0.3081"}),
    ({"kind": "labels", "label_shape": [-1, 1]}, {"output_kind": "labels", "num_classes": 10}),
])
@pytest.mark.parametrize("transport", ["rest", "rest-binary"])
def test_deployed_shapes_give_the_local_labels(lenet, mnist, shape, spec, transport):
    from nnmark.oracles.endpoint import parse_normalize

    x = mnist.test.x[:12]
    local = TorchOracle(lenet, SHAPE)
    seen = []
    if "normalize" in spec:
        spec = {**spec, "normalize": parse_normalize(spec["normalize"])}
    with serving(shaped_endpoint(lenet, seen=seen, **shape)) as url, \
            HttpOracle(url, transport=transport, input_shape=SHAPE, **FAST, **spec) as oracle:
        labels = oracle.labels(x)
        assert oracle.access == ("labels" if shape.get("kind") == "labels" else "probabilities")
    assert all(r.id.startswith("nnmark-") for r in seen) and len({r.id for r in seen}) == len(seen)
    if shape.get("dtype") == "UINT8":
        assert (labels == local.labels((x * 255).round() / 255)).all()
    else:
        assert torch.equal(labels, local.labels(x))


def test_a_500_fails_at_once_with_the_servers_message_and_429_is_retried(mnist):
    async def broken(req, calls):
        return JSONResponse({"error": "model crashed:\nCUDA out of memory"}, status_code=500)

    app = fake_endpoint(broken)
    with serving(app) as url, HttpOracle(url, retries=3, **FAST) as oracle:
        with pytest.raises(EndpointError, match=r"HTTP 500\): model crashed: CUDA out of memory$"):
            oracle.labels(mnist.test.x[:2])
    assert app.state.calls == 1

    async def busy(req, calls):
        if calls == 1:
            return JSONResponse({"error": "slow down"}, status_code=429)
        return JSONResponse({**uniform_answer(req), "id": 12345})

    app = fake_endpoint(busy)
    with serving(app) as url, HttpOracle(url, retries=1, consistency_check=False, **FAST) as oracle:
        assert oracle.labels(mnist.test.x[:2]).shape == (2,)
    assert app.state.calls == 2


def test_an_answer_over_the_byte_cap_is_cut_off_and_refused(mnist):
    async def huge(req, calls):
        answer = uniform_answer(req)
        answer["padding"] = "x" * 200_000
        return JSONResponse(answer)

    app = fake_endpoint(huge)
    with serving(app) as url, HttpOracle(url, max_answer_bytes=50_000, retries=2, **FAST) as oracle:
        with pytest.raises(EndpointError, match="answered more than 50000 bytes"):
            oracle.labels(mnist.test.x[:2])
    assert app.state.calls == 1


def test_a_trickling_answer_is_cut_off_at_the_deadline(mnist):
    from fastapi.responses import StreamingResponse

    async def trickle(req, calls):
        async def drip():
            for _ in range(40):
                yield b" "
                await asyncio.sleep(0.05)
            yield JSONResponse(uniform_answer(req)).body

        return StreamingResponse(drip(), media_type="application/json")

    app = fake_endpoint(trickle)
    with serving(app) as url, HttpOracle(url, timeout=0.5, retries=0, backoff=0.01) as oracle:
        start = time.perf_counter()
        with pytest.raises(EndpointError, match="no complete answer within 0.5 s"):
            oracle.labels(mnist.test.x[:2])
        elapsed = time.perf_counter() - start
    assert elapsed < 2.0  # each byte came within the per-read time; the whole answer would take 2 s


def test_connect_picks_the_transport_and_urls_never_show_their_password(served):
    from nnmark.oracles import connect

    url, _ = served
    with connect(url, model_name="lenet", token="tok", transport="rest-binary") as oracle:
        assert isinstance(oracle, HttpOracle) and oracle.spec.transport == "rest-binary"
    port = url.rsplit(":", 1)[1]
    with pytest.raises(EndpointError, match=r"http://\*\*\*@127.0.0.1") as e:
        HttpOracle(f"http://alice:pw-s3cret@127.0.0.1:{port}", model_name="nope", token="tok", retries=0)
    assert "pw-s3cret" not in str(e.value)


@pytest.fixture(scope="module")
def canary_key_file(lenet, mnist, tmp_path_factory):
    from nnmark import keys
    from nnmark.marks import canary

    oracle = TorchOracle(lenet, SHAPE)
    key = canary.attach(dbi.create(oracle, mnist.train.x[:10], itr=50, eps=1e-3), oracle, mnist.test.x[:300],
                        mnist.test.y[:300])
    path = tmp_path_factory.mktemp("keys") / "dbi.key"
    keys.save(key, path, secret=None)
    return path


ALL_CANARIES = "preflight: 8 of 8 canaries answered as the keyed model does"


def cli(*args, env=None):
    from click.testing import CliRunner

    from nnmark.cli import main

    return CliRunner().invoke(main, [str(a) for a in args],
                              env={"NNMARK_SECRET": None, "NNMARK_TOKEN": None, **(env or {})})


def test_cli_endpoint_flags_describe_a_deployment_and_contradictions_exit_2(lenet, canary_key_file):
    key = ("verify", canary_key_file, "--unsigned", "--endpoint")
    with serving(shaped_endpoint(lenet, kind="logits", name="output__0")) as url:
        r = cli(*key, url, "--output-name", "output__0", "--output-kind", "logits", "--transport", "rest-binary",
                "--batch-size", 4, "--timeout", 5, "--retries", 0, "--no-consistency-check", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["details"]["preflight"] == ALL_CANARIES
        r = cli(*key, url, "--output-name", "output__0", "--output-kind", "logits")
        assert r.exit_code == 0 and r.stderr.strip() == ALL_CANARIES
        r = cli(*key, url)
        assert r.exit_code == 2 and "none is named 'probabilities' or 'logits': pass --output-name" in r.stderr
    with serving(create_app(TorchOracle(lenet, SHAPE), model_name="model")) as url:
        r = cli(*key, url, "--layout", "NHWC")
        assert r.exit_code == 2 and "metadata says NCHW, --layout says NHWC" in r.stderr
        r = cli(*key, f"{url}/v2/models/model")
        assert r.exit_code == 2 and f"use '{url}'" in r.stderr
        r = cli(*key, url, env={"NNMARK_TOKEN": "s3cret\ntoken"})
        assert r.exit_code == 2 and "HTTP header cannot carry" in r.stderr and "s3cret" not in r.output


def test_cli_malformed_answers_and_metadata_exit_2_with_one_line(canary_key_file):
    async def overflowing(req, calls):
        return _json_answer([0, HUGE, HUGE], 0)

    key = ("verify", canary_key_file, "--unsigned", "--endpoint")
    for app, fragment in ((fake_endpoint(overflowing), "malformed probabilities: tensor 'probabilities': shape"),
                          (fake_endpoint(overflowing, max_batch="abc"), "max_batch_size must be an integer")):
        with serving(app) as url:
            r = cli(*key, url, "--retries", 0, "--json")
        assert r.exit_code == 2 and fragment in r.stderr and len(r.stderr.splitlines()) == 1, r.output
        assert json.loads(r.stdout)["type"] == "EndpointError" and "Traceback" not in r.output


def test_cli_preflight_stops_a_misnormalised_endpoint_with_exit_2(lenet, canary_key_file):
    key = ("verify", canary_key_file, "--unsigned", "--endpoint")
    with serving(shaped_endpoint(lenet, mean=0.1307, std=0.3081)) as url:
        r = cli(*key, url)
        assert r.exit_code == 2, r.output
        assert "not normalised with the MNIST statistics it expects: check --normalize" in r.stderr
        assert len(r.stderr.splitlines()) == 1
        assert cli(*key, url, "--normalize", "0.1307,0.3081").exit_code == 0
