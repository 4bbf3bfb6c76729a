"""Triton's client library (HTTP with JSON and binary tensors, gRPC) calling ``nnmark serve``: health, metadata, infer.

Answers must equal the local float32 model's bit for bit, the "label" output its argmax, the id the request's.
"""

from __future__ import annotations

import numpy as np
import pytest

from features import triton_client
from nnmark.oracles import TorchOracle

pytestmark = pytest.mark.interop

N = 8
REQUEST_ID = "triton-1"
INPUT, OUTPUT, LABEL = "input", "probabilities", "label"

TRANSPORTS = [
    pytest.param("http", False, id="http-json"),
    pytest.param("http", True, id="http-binary"),
    pytest.param("grpc", True, id="grpc"),
]
"""(Triton client module, binary tensors): gRPC tensors are always binary."""


def client_for(server, protocol: str):
    """Triton's client module and a client of ``server`` over ``protocol``."""
    module = triton_client(protocol)
    address = server.url.removeprefix("http://") if protocol == "http" else server.grpc
    return module, module.InferenceServerClient(address)


@pytest.mark.parametrize("protocol, binary", TRANSPORTS)
def test_health_metadata_and_infer(nnmark_serve, protocol, binary, lenet, mnist):
    triton, client = client_for(nnmark_serve, protocol)
    http = protocol == "http"
    (model,) = nnmark_serve.models
    x = mnist.test.x[:N]
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
        meta = client.get_model_metadata(model) if http else client.get_model_metadata(model, as_json=True)
        assert meta["name"] == model
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == \
            [(INPUT, "FP32", [-1, *mnist.shape])]
        assert {t["name"] for t in meta["outputs"]} == {OUTPUT, LABEL}
        request = triton.InferInput(INPUT, list(x.shape), "FP32")
        request.set_data_from_numpy(x.numpy(), **({"binary_data": binary} if http else {}))
        outputs = [triton.InferRequestedOutput(name, **({"binary_data": binary} if http else {}))
                   for name in (OUTPUT, LABEL)]
        result = client.infer(model, [request], outputs=outputs, request_id=REQUEST_ID)
    finally:
        client.close()
    p, labels = TorchOracle(lenet, mnist.shape).predict(x)
    assert np.array_equal(result.as_numpy(OUTPUT), p.numpy())
    assert np.array_equal(result.as_numpy(LABEL), labels.numpy())
    response = result.get_response()
    assert (response["id"] if http else response.id) == REQUEST_ID
