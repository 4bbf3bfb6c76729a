"""A KServe 0.21 ModelServer whose custom models serve nnmark checkpoints in ``shapes.SHAPES``.

Runs in the KServe virtualenv (``make interop-envs``)::

    python kserve_model.py --models models.json --http_port 8080 --grpc_port 8081

``models.json`` is a list of ``{"name", "checkpoint", "shape", "dtype"}``; KServe reads its own flags
(``--http_port``, ``--grpc_port``, ...) from the same command line. The answer's ``id`` is the request's,
as KServe's v2 response model requires a string: a request without one is refused (HTTP 500).

KServe listens on every interface ("0.0.0.0" for REST, "[::]" for gRPC) with no option to change it;
``listen_on_loopback`` moves both to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import types

import grpc
import kserve
from kserve.errors import InvalidInput
from kserve.protocol.grpc import server as grpc_server
from kserve.protocol.rest import server as rest_server
from kserve.utils.utils import from_np_dtype

from shapes import Served

HOST = "127.0.0.1"


class NnmarkModel(kserve.Model):
    """An nnmark checkpoint in one shape, as a KServe v2 model (metadata from ``shapes.metadata``)."""

    def __init__(self, name: str, checkpoint: str, shape: str, dtype: str = "float32"):
        super().__init__(name)
        self._served = Served(checkpoint, shape, dtype)
        self.ready = True

    def get_input_types(self) -> list[dict]:
        return self._served.metadata()[0]

    def get_output_types(self) -> list[dict]:
        return self._served.metadata()[1]

    async def predict(self, payload: kserve.InferRequest, headers=None, response_headers=None) -> kserve.InferResponse:
        if len(payload.inputs) != 1:
            raise InvalidInput(f"expected one input, got {len(payload.inputs)}")
        try:
            answers = self._served(payload.inputs[0].as_numpy())
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        outputs = []
        for name, a in answers.items():
            output = kserve.InferOutput(name=name, shape=list(a.shape), datatype=from_np_dtype(a.dtype))
            output.set_data_from_numpy(a, binary_data=payload.use_binary_outputs)
            outputs.append(output)
        return kserve.InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs,
                                    use_binary_outputs=payload.use_binary_outputs,
                                    requested_outputs=payload.request_outputs)


def listen_on_loopback() -> None:
    """Make KServe's REST (uvicorn) and gRPC servers bind ``HOST`` instead of every interface."""
    rest_init = rest_server.RESTServer.__init__

    def init(self, *args, **kwargs):
        rest_init(self, *args, **kwargs)
        self.config.host = HOST

    rest_server.RESTServer.__init__ = init
    aio_server = grpc.aio.server

    def server(*args, **kwargs):
        made = aio_server(*args, **kwargs)
        add_port = made.add_insecure_port
        made.add_insecure_port = lambda address: add_port(address.replace("[::]", HOST, 1))
        return made

    grpc_server.aio = types.SimpleNamespace(server=server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="JSON list of {name, checkpoint, shape, dtype}")
    args, _ = parser.parse_known_args()  # the rest are KServe's own flags
    with open(args.models) as f:
        models = [NnmarkModel(**entry) for entry in json.load(f)]
    listen_on_loopback()
    kserve.ModelServer().start(models)


if __name__ == "__main__":
    main()
