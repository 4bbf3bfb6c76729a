"""``HttpOracle``: same answers and verdicts as a local oracle, retries, time-outs, budget, lying endpoints."""

import asyncio
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
