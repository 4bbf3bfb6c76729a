"""OIP v2 over gRPC: ``GrpcOracle`` against ``serve.grpc_server``, the shipped descriptor, refusals."""

import logging
import socket

import pytest

grpc = pytest.importorskip("grpc", reason="needs the grpc extra: pip install 'nnmark[grpc]'")

import torch  # noqa: E402

from nnmark import marks  # noqa: E402
from nnmark.attacks import weight_noise  # noqa: E402
from nnmark.errors import EndpointError  # noqa: E402
from nnmark.marks.integrity import dbi  # noqa: E402
from nnmark.oracles import GrpcOracle, HttpOracle, LabelsOracle, TorchOracle, connect, proto  # noqa: E402
from nnmark.serve import create_app, serving, serving_grpc  # noqa: E402
from test_serve import CLIENTS, WhoAsks  # noqa: E402

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def app(lenet):
    return create_app(TorchOracle(lenet, SHAPE), model_name="lenet", token=b"tok", max_batch=16)


@pytest.fixture(scope="module")
def grpc_url(app):
    with serving_grpc(app) as url:
        yield url


def test_grpc_answers_equal_rest_and_local_bit_for_bit(app, grpc_url, lenet, mnist):
    x = mnist.test.x[:40]
    with GrpcOracle(grpc_url, model_name="lenet", token="tok", batch_size=16) as oracle, serving(app) as url, \
            HttpOracle(url, model_name="lenet", token="tok") as rest:
        # gRPC metadata has no parameters, so no max_batch_size: the batch size is the client's
        assert (oracle.input_shape, oracle.num_classes, oracle.batch_size) == (SHAPE, 10, 16)
        p, labels = oracle.predict(x)
        assert oracle.queries == 40 + 2
        p_rest, labels_rest = rest.predict(x)
    local = torch.cat([TorchOracle(lenet, SHAPE).probabilities(c) for c in x.split(16)])
    assert torch.equal(p, p_rest) and torch.equal(labels, labels_rest)
    assert torch.equal(p.view(torch.int32), local.view(torch.int32))


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_dbi_key_through_grpc_gives_the_local_verdict(lenet, mnist, noise):
    key = dbi.create(TorchOracle(lenet, SHAPE), mnist.train.x[:8], itr=30, eps=1e-3)
    model = weight_noise(lenet, noise, seed=0) if noise else lenet
    local = marks.verify(LabelsOracle(TorchOracle(model, SHAPE)), key)
    with serving_grpc(create_app(TorchOracle(model, SHAPE), model_name="m", output="logits")) as url, \
            connect(url, model_name="m", input_shape=SHAPE) as oracle:
        remote = marks.verify(oracle, key)
    assert (remote.decision, remote.flipped) == (local.decision, local.flipped)
    assert remote.decision == ("tampered" if noise else "intact")


def test_grpc_refusals_are_one_line_and_not_retried(grpc_url, mnist):
    with pytest.raises(EndpointError, match="UNAUTHENTICATED: wrong bearer token"):
        GrpcOracle(grpc_url, model_name="lenet", token="nope")
    with pytest.raises(EndpointError, match="NOT_FOUND: unknown model 'other'"):
        GrpcOracle(grpc_url, model_name="other", token="tok")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError, match="failed 2 times; last: gRPC UNAVAILABLE"):
        GrpcOracle(f"grpc://127.0.0.1:{port}", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(EndpointError, match="gRPC endpoint"):
        HttpOracle(grpc_url)
    with GrpcOracle(grpc_url, model_name="lenet", token="tok") as oracle:
        request = proto.ModelInferRequest(model_name="lenet", id="bad")
        request.inputs.add(name="input", datatype="FP32", shape=[1, *SHAPE]).contents.fp32_contents.extend([2.0] * 784)
        with pytest.raises(EndpointError, match=r"INVALID_ARGUMENT: data must lie in \[0, 1\]"):
            oracle._call("ModelInfer", request)


def test_grpc_callers_reach_the_oracle_as_their_named_client(mnist):
    log = []
    app = create_app(WhoAsks(torch.full((4, 10), 0.1), log), model_name="m", clients=CLIENTS)
    with serving_grpc(app) as url:
        for token in ("tok-bob", "tok-alice"):
            with GrpcOracle(url, model_name="m", token=token, input_shape=SHAPE, num_classes=10) as oracle:
                oracle.probabilities(mnist.test.x[:2])
        with pytest.raises(EndpointError, match="UNAUTHENTICATED: wrong bearer token"):
            GrpcOracle(url, model_name="m", token="tok")
    half = len(log) // 2  # each oracle's first-call probe, then its request
    assert half >= 1 and log == ["bob"] * half + ["alice"] * half


HUGE = 2**62


def _typed(shape, values=()):
    request = proto.ModelInferRequest(model_name="lenet")
    request.inputs.add(name="input", datatype="FP32", shape=shape).contents.fp32_contents.extend(values)
    return request


def _raw(shape, raw: bytes):
    request = proto.ModelInferRequest(model_name="lenet", raw_input_contents=[raw])
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    return request


@pytest.mark.parametrize("request_, fragment", [
    (_typed([2**32, 2**32, 1, 1]), "holds more values than its message"),
    (_typed([0, HUGE, HUGE]), "holds more values than its message"),
    (_typed([-1, *SHAPE], [0.5] * 784), "sizes >= 0"),
    (_typed([2, *SHAPE], [0.5] * 784), "has 784 values, its shape [2, 1, 28, 28] needs 1568"),
    (_raw([0, HUGE, HUGE], b""), "holds more values than its message"),
    (_raw([2**40, *SHAPE], bytes(3136)), "holds more values than its message"),
    (_raw([1, *SHAPE], bytes(1000)), "do not fit its shape"),
], ids=["typed-int64-overflowing-shape", "typed-shape-overflows", "typed-negative-shape",
        "typed-shape-and-data-disagree", "raw-shape-overflows", "raw-count-beyond-the-message",
        "raw-size-and-shape-disagree"])
def test_malformed_shapes_are_a_quiet_invalid_argument_on_a_channel_that_still_works(grpc_url, mnist, caplog,
                                                                                      request_, fragment):
    with GrpcOracle(grpc_url, model_name="lenet", token="tok", consistency_check=False) as oracle:
        with pytest.raises(EndpointError, match=r"^[^\n]*INVALID_ARGUMENT: tensor 'input'[^\n]*$") as e:
            oracle._call("ModelInfer", request_)
        assert fragment in str(e.value)
        assert oracle.labels(mnist.test.x[:2]).shape == (2,)  # the same channel answers the next request
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def fake_grpc_endpoint(answer):
    """A gRPC OIP v2 server of a FP32 [-1, 1, 28, 28] -> probabilities [-1, 10] model whose ModelInfer answers
    ``answer(request)``; returns the started server and its URL."""
    from concurrent import futures

    from nnmark.oracles import oip_grpc

    meta = oip_grpc.metadata_message({
        "name": "m", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *SHAPE]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([oip_grpc.service_handler({
        "ModelMetadata": lambda request, context: meta,
        "ModelInfer": lambda request, context: answer(request),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"grpc://127.0.0.1:{port}"


def _answer(shape, raw: bytes | None = None, values=()):
    response = proto.ModelInferResponse(model_name="m", raw_output_contents=[] if raw is None else [raw])
    response.outputs.add(name="probabilities", datatype="FP32", shape=shape).contents.fp32_contents.extend(values)
    return response


@pytest.mark.parametrize("answer, fragment", [
    (_answer([0, HUGE, HUGE], raw=b""), "holds more values than its message"),
    (_answer([0, HUGE, HUGE]), "holds more values than its message"),
    (_answer([2**32, 2**32]), "holds more values than its message"),
    (_answer([-1, 10], values=[0.1] * 20), "sizes >= 0"),
    (_answer([3, 10], values=[0.1] * 30), "expected a float tensor of shape [2, 10], got float32 of shape [3, 10]"),
    (_answer([2, 10], values=[0.1] * 19), "has 19 values, its shape [2, 10] needs 20"),
    (_answer([2, 10], raw=bytes(40)), "do not fit its shape"),
], ids=["raw-shape-overflows", "typed-shape-overflows", "int64-overflowing-shape", "negative-shape",
        "not-the-batch-asked", "shape-and-data-disagree", "raw-size-and-shape-disagree"])
def test_client_refuses_malformed_answer_shapes_in_one_line(mnist, answer, fragment):
    server, url = fake_grpc_endpoint(lambda request: answer)
    try:
        with GrpcOracle(url, model_name="m", retries=0, consistency_check=False) as oracle:
            with pytest.raises(EndpointError, match="^endpoint returned malformed probabilities: [^\n]*$") as e:
                oracle.probabilities(mnist.test.x[:2])
    finally:
        server.stop(None).wait()
    assert fragment in str(e.value)


def test_server_answers_typed_requests_and_echoes_the_id(grpc_url, mnist):
    channel = grpc.insecure_channel(grpc_url.removeprefix("grpc://"))
    req_cls, resp_cls = proto.METHODS["ModelInfer"]
    call = channel.unary_unary(f"/{proto.SERVICE}/ModelInfer", request_serializer=req_cls.SerializeToString,
                               response_deserializer=resp_cls.FromString)
    request = req_cls(model_name="lenet", id="req-9")
    request.inputs.add(name="input", datatype="FP32", shape=[2, *SHAPE]).contents.fp32_contents.extend(
        mnist.test.x[:2].flatten().tolist())
    request.outputs.add(name="label")
    answer = call(request, metadata=(("authorization", "Bearer tok"),), timeout=10)
    channel.close()
    assert answer.id == "req-9" and [o.name for o in answer.outputs] == ["label"]
    assert list(answer.outputs[0].shape) == [2] and len(answer.raw_output_contents[0]) == 16


def test_the_shipped_descriptor_is_the_proto_compiled():
    pytest.importorskip("grpc_tools", reason="regenerating needs grpcio-tools (make proto)")
    import importlib.util
    from pathlib import Path

    path = Path(proto.__file__).parent / "_generate.py"
    spec = importlib.util.spec_from_file_location("_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate() == (Path(proto.__file__).parent / "descriptor.py").read_text()
    fields = {f.name: f.number for f in proto.ModelInferRequest.DESCRIPTOR.fields}
    assert fields == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
                      "raw_input_contents": 7}


def test_nnmark_serve_grpc_port_and_verify_over_grpc(lenet, lenet_file, mnist, tmp_path):
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    from nnmark import keys
    from nnmark.cli import main

    key_file = tmp_path / "dbi.key"
    keys.save(dbi.create(TorchOracle(lenet, SHAPE), mnist.train.x[:6], itr=30, eps=1e-3), key_file, secret=None)
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    server = subprocess.Popen([sys.executable, "-m", "nnmark", "serve", "--model", str(lenet_file), "--port",
                               str(ports[0]), "--grpc-port", str(ports[1]), "--model-name", "lenet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # start-up: at most 60 s
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", ports[0])) == 0:
                    break
            time.sleep(0.1)
        args = ["verify", str(key_file), "--unsigned", "--model-name", "lenet", "--endpoint"]
        r = CliRunner().invoke(main, [*args, f"grpc://127.0.0.1:{ports[1]}", "--batch-size", "8"],
                               env={"NNMARK_TOKEN": None})
        assert r.exit_code == 0, r.output
        assert CliRunner().invoke(main, [*args, f"http://127.0.0.1:{ports[0]}", "--transport", "grpc"]).exit_code == 2
    finally:
        server.terminate()
        server.wait(timeout=10)
    r = CliRunner().invoke(main, ["serve", "--model", str(lenet_file), "--host", "0.0.0.0", "--port", str(ports[0])],
                           env={"NNMARK_TOKEN": None})
    assert r.exit_code == 2 and "refusing to serve 0.0.0.0 without a token" in r.stderr


def test_audit_asks_a_grpc_endpoint_and_logs_its_metadata(app, grpc_url, lenet, mnist, tmp_path):
    import json

    from click.testing import CliRunner

    from nnmark import __version__, keys
    from nnmark.cli import main
    from nnmark.marks.integrity import baselines

    key_file = tmp_path / "natural.key"
    keys.save(baselines.natural(TorchOracle(lenet, SHAPE), mnist.test.x[:16]), key_file, secret=b"audit secret")
    (tmp_path / "token").write_bytes(b"tok")
    (tmp_path / "secret").write_bytes(b"audit secret")
    r = CliRunner().invoke(main, ["audit", str(key_file), "--endpoint", grpc_url, "--model-name", "lenet",
                                  "--token-file", str(tmp_path / "token"), "--secret-file", str(tmp_path / "secret"),
                                  "--report", str(tmp_path / "audit.json")], env={"NNMARK_SECRET": None})
    assert r.exit_code == 0, r.output
    (target,) = json.loads((tmp_path / "audit.json").read_text())["targets"]
    assert target["info"]["model"]["name"] == "lenet"
    assert target["info"]["server"] == {"name": "nnmark", "version": __version__, "extensions": ["binary_tensor_data"]}
