"""The wire format of real servers (MLServer 1.7, KServe 0.21), pinned with raw HTTP and the Triton gRPC client.

Each shape of ``shapes.SHAPES`` must publish its metadata and answer a right request as the local model
does: FP32 inputs bit for bit, UINT8 NHWC inputs (server-side normalisation) to float32 rounding.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

import shapes
from features import triton_client
from nnmark.oracles import TorchOracle

pytestmark = pytest.mark.interop

N = 8
TIMEOUT = 30.0
REQUEST_ID = "nnmark-interop-1"
NORMALISED_ATOL = 1e-5
"""UINT8 NHWC answers: the server's normalisation and the network's undoing of it round in float32."""
BINARY_HEADER = "Inference-Header-Content-Length"
JSON = {"Content-Type": "application/json"}


def request_body(shape: shapes.Shape, tensor: np.ndarray, **extra) -> dict:
    return {**extra, "inputs": [{"name": shape.input_name, "shape": list(tensor.shape), "datatype": shape.datatype,
                                 "data": tensor.flatten().tolist()}]}


def json_outputs(answer: dict) -> dict[str, tuple[str, list[int], np.ndarray]]:
    """{name: (datatype, shape, values)} of a JSON answer."""
    return {o["name"]: (o["datatype"], o["shape"], np.asarray(o["data"])) for o in answer["outputs"]}


def expected_outputs(lenet, x: torch.Tensor, shape: shapes.Shape) -> dict[str, np.ndarray]:
    """What the local float32 model answers ``x`` (quantised to 0-255 pixels for a UINT8 shape)."""
    if shape.datatype == "UINT8":
        x = (x * 255).round() / 255
    oracle = TorchOracle(lenet, tuple(x.shape[1:]))
    p, labels = oracle.predict(x)
    answers = {"probabilities": p.numpy(), "label": labels.numpy(), "label-column": labels[:, None].numpy(),
               "logits": oracle.logits(x).numpy()}
    return {name: answers[kind] for name, kind in shape.outputs}


def test_health_and_metadata_of_every_shape(server, lenet, mnist):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        for name, shape in shapes.SHAPES.items():
            meta = client.get(f"/v2/models/{name}").json()
            inputs, outputs = shapes.metadata(shape, mnist.shape, mnist.num_classes)
            assert meta["name"] == name
            assert [{k: t[k] for k in ("name", "datatype", "shape")} for t in meta["inputs"]] == inputs
            assert [{k: t[k] for k in ("name", "datatype", "shape")} for t in meta["outputs"]] == outputs
        assert client.get("/v2/models/no-such-model").status_code in (400, 404)


@pytest.mark.parametrize("name", list(shapes.SHAPES))
def test_infer_answers_as_the_local_model(server, name, lenet, mnist):
    shape, x = shapes.SHAPES[name], mnist.test.x[:N]
    body = request_body(shape, shapes.to_wire(x, shape), id=REQUEST_ID)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        response = client.post(f"/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == REQUEST_ID and answer["model_name"] == name
    got = json_outputs(answer)
    want = expected_outputs(lenet, x, shape)
    assert set(got) == set(want)
    for out, values in want.items():
        datatype, dims, data = got[out]
        assert (datatype, dims) == (shapes.datatype(values), list(values.shape)), out
        data = data.astype(values.dtype).reshape(values.shape)
        if values.dtype == np.int64 or shape.normalize is None:
            assert np.array_equal(data, values), out
        else:
            np.testing.assert_allclose(data, values, rtol=0, atol=NORMALISED_ATOL)


def test_a_wrong_input_is_refused_with_the_servers_message(server, mnist):
    """An NCHW FP32 tensor sent to the NHWC UINT8 model: HTTP 400, the runtime's message passed on."""
    shape = shapes.SHAPES["nhwc-uint8"]
    tensor = shapes.to_wire(mnist.test.x[:2], shapes.SHAPES["probabilities"])
    body = {"id": REQUEST_ID, "inputs": [{"name": shape.input_name, "shape": list(tensor.shape), "datatype": "FP32",
                                          "data": tensor.flatten().tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/nhwc-uint8/infer", json=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "must be UINT8 [-1, 28, 28, 1]" in response.json()["error"]


def test_kserve_needs_a_string_request_id(kserve, mnist):
    """KServe's v2 response model requires ``id`` as a string: a request without one gets HTTP 500."""
    shape = shapes.SHAPES["probabilities"]
    body = request_body(shape, shapes.to_wire(mnist.test.x[:2], shape))
    response = httpx.post(f"{kserve.url}/v2/models/probabilities/infer", json=body, timeout=TIMEOUT)
    assert response.status_code == 500
    assert "id" in response.json()["error"] and "valid string" in response.json()["error"]


def test_mlserver_answers_a_request_without_an_id_with_its_own(mlserver, mnist):
    shape = shapes.SHAPES["probabilities"]
    body = request_body(shape, shapes.to_wire(mnist.test.x[:2], shape))
    first, second = (httpx.post(f"{mlserver.url}/v2/models/probabilities/infer", json=body, timeout=TIMEOUT).json()
                     for _ in range(2))
    assert isinstance(first["id"], str) and first["id"] and first["id"] != second["id"]


def binary_infer(server, x: torch.Tensor) -> httpx.Response:
    """``x`` to the probabilities model with the binary tensor extension: the tensor's bytes after the JSON
    header (its length in ``Inference-Header-Content-Length``), binary outputs asked for."""
    shape = shapes.SHAPES["probabilities"]
    tensor = shapes.to_wire(x, shape)
    header = json.dumps({"id": REQUEST_ID, "parameters": {"binary_data_output": True},
                         "inputs": [{"name": shape.input_name, "shape": list(tensor.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": tensor.nbytes}}]}).encode()
    return httpx.post(f"{server.url}/v2/models/probabilities/infer", content=header + tensor.tobytes(),
                      headers={BINARY_HEADER: str(len(header)), "Content-Type": "application/octet-stream"},
                      timeout=TIMEOUT)


def test_kserve_speaks_the_binary_tensor_extension(kserve, lenet, mnist):
    x = mnist.test.x[:N]
    response = binary_infer(kserve, x)
    assert response.status_code == 200, response.text
    size = int(response.headers[BINARY_HEADER])
    answer, raw = json.loads(response.content[:size]), response.content[size:]
    assert answer["id"] == REQUEST_ID
    want = expected_outputs(lenet, x, shapes.SHAPES["probabilities"])
    offset = 0
    for out in answer["outputs"]:
        nbytes = out["parameters"]["binary_data_size"]
        values = np.frombuffer(raw[offset:offset + nbytes], dtype=want[out["name"]].dtype).reshape(out["shape"])
        assert np.array_equal(values, want[out["name"]]), out["name"]
        offset += nbytes
    assert offset == len(raw) and {o["name"] for o in answer["outputs"]} == set(want)


def test_mlserver_fails_on_the_binary_tensor_extension(mlserver, mnist):
    """MLServer's REST server has no binary extension (its gRPC takes raw tensors): its validation-error
    handler tries to echo the body as UTF-8, so a binary request is an HTTP 500 with a traceback."""
    response = binary_infer(mlserver, mnist.test.x[:N])
    assert response.status_code == 500 and "UnicodeDecodeError" in response.text


@pytest.mark.parametrize("name", ["probabilities", "nhwc-uint8"])
def test_grpc_answers_as_rest(server, name, mnist):
    """The same model over the OIP v2 ``GRPCInferenceService`` (Triton's gRPC client): live, metadata, infer."""
    grpcclient = triton_client("grpc")
    shape, x = shapes.SHAPES[name], mnist.test.x[:N]
    tensor = shapes.to_wire(x, shape)
    rest = json_outputs(httpx.post(f"{server.url}/v2/models/{name}/infer", timeout=TIMEOUT,
                                   json=request_body(shape, tensor, id=REQUEST_ID)).json())
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        assert client.is_server_live() and client.is_model_ready(name)
        meta = client.get_model_metadata(name, as_json=True)
        inputs, _ = shapes.metadata(shape, mnist.shape, mnist.num_classes)
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in inputs]
        request = grpcclient.InferInput(shape.input_name, list(tensor.shape), shape.datatype)
        request.set_data_from_numpy(tensor)
        result = client.infer(name, [request], request_id=REQUEST_ID)
    finally:
        client.close()
    assert result.get_response().id == REQUEST_ID
    for out, (_, dims, values) in rest.items():
        got = result.as_numpy(out)
        assert list(got.shape) == dims and np.array_equal(got.flatten(), values.astype(got.dtype)), out
