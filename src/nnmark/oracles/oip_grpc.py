"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``): tensor codec and ``GrpcOracle``.

Needs the optional extra ``nnmark[grpc]`` (grpcio, protobuf). The messages come from the protocol's
.proto (``nnmark/oracles/proto``), shipped as its generated descriptor, so message and field names and
numbers are those Triton, KServe and MLServer speak. Requests carry their inputs in ``raw_input_contents``
(little-endian bytes, one entry per input); answers are read from ``raw_output_contents`` or from the typed
``contents`` (``fp32_contents``, ``int64_contents``, ...), every size, range and value checked as in the
REST codec (``nnmark.oracles.oip``). Metadata is turned into the REST JSON form, so one ``resolve`` serves
both transports (the gRPC metadata has no ``parameters``, hence no model card and no max_batch_size: the
batch size is the spec's ``batch_size``).

``GrpcOracle`` behaves as ``HttpOracle`` (see ``nnmark.oracles.remote``): the bearer token goes in the
``authorization`` call metadata; ``timeout`` is each call's gRPC deadline; ``max_answer_bytes`` is the
channel's largest receive message; UNAVAILABLE and DEADLINE_EXCEEDED are retried, any other status fails
at once with the server's message. Plain-text channels only (no TLS).

Example::

    with GrpcOracle("grpc://127.0.0.1:8001", model_name="lenet", token="s3cret") as oracle:
        verdict = marks.verify(oracle, key)
"""

from __future__ import annotations

import math
from typing import Callable, Mapping
from urllib.parse import urlsplit

import grpc
import numpy as np

from nnmark.errors import EndpointError, EndpointUnreachable
from nnmark.oracles import oip, proto
from nnmark.oracles.auth import check_token
from nnmark.oracles.endpoint import EndpointSpec
from nnmark.oracles.remote import EndpointOracle, Transient, make_spec

CONTENTS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}
"""The typed ``InferTensorContents`` field of each datatype (FP16 travels only as raw bytes)."""
TRANSIENT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
SERVER_FAILURE_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
"""A server that failed to answer (as HTTP 5xx): not retried, and an outage (``EndpointUnreachable``)."""


def read_tensors(tensors, raw: list[bytes], where: str, most: int) -> dict[str, np.ndarray]:
    """``{name: array}`` of repeated ``InferInputTensor``/``InferOutputTensor`` and their raw contents;
    ``most`` is the message's byte count (``ByteSize()``), which bounds every shape (``oip.check_shape``)."""
    if raw and len(raw) != len(tensors):
        raise oip.MalformedMessage(f"{len(raw)} raw contents for {len(tensors)} {where}")
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(tensors):
        name = f"tensor {t.name[:40]!r}"
        if t.name in arrays or t.datatype not in oip.DTYPES:
            raise oip.MalformedMessage(f"{name}: a second tensor of that name, or datatype not one of "
                                       f"{', '.join(oip.DTYPES)}")
        shape = oip.check_shape(list(t.shape), name, most)
        if raw:
            arrays[t.name] = oip.bytes_array(raw[i], t.datatype, shape, name)
            continue
        if t.datatype not in CONTENTS:
            raise oip.MalformedMessage(f"{name}: {t.datatype} travels only in raw contents")
        values = list(getattr(t.contents, CONTENTS[t.datatype]))
        if len(values) != math.prod(shape):
            raise oip.MalformedMessage(f"{name} has {len(values)} values, its shape {shape} needs {math.prod(shape)}")
        arrays[t.name] = oip.values_array(values, t.datatype).reshape(shape)
    return arrays


def write_tensors(arrays: Mapping[str, np.ndarray], tensors, raw) -> None:
    """Append each array to the repeated ``tensors`` (name, datatype, shape) and its bytes to ``raw``."""
    for name, array in arrays.items():
        datatype = oip.datatype_of(array)
        tensors.add(name=name, datatype=datatype, shape=list(array.shape))
        raw.append(np.ascontiguousarray(array, oip.DTYPES[datatype]).tobytes())


def metadata_dict(meta) -> dict:
    """A ``ModelMetadataResponse`` in the REST JSON form."""
    def tensor(t) -> dict:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": [tensor(t) for t in meta.inputs], "outputs": [tensor(t) for t in meta.outputs]}


def metadata_message(meta: Mapping):
    """The REST JSON model metadata as a ``ModelMetadataResponse`` (its ``parameters`` have no place there)."""
    def tensors(items) -> list:
        return [proto.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in items]
    return proto.ModelMetadataResponse(name=meta["name"], versions=meta.get("versions", []),
                                       platform=meta.get("platform", ""), inputs=tensors(meta["inputs"]),
                                       outputs=tensors(meta["outputs"]))


def service_handler(implementations: Mapping[str, Callable]) -> grpc.GenericRpcHandler:
    """A handler for ``inference.GRPCInferenceService``; method ``name`` runs
    ``implementations[name](request, context)``."""
    return grpc.method_handlers_generic_handler(proto.SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=proto.METHODS[name][0].FromString,
                                                  response_serializer=proto.METHODS[name][1].SerializeToString)
        for name, fn in implementations.items()})


class GrpcOracle(EndpointOracle):
    """An oracle over an OIP v2 gRPC endpoint (see the module docstring).

    Args:
        spec: an ``EndpointSpec`` with a grpc:// URL, or that URL with spec fields as keywords.
        token: bearer token sent as ``authorization: Bearer <token>`` call metadata.
        budget, input_shape, num_classes, seed, progress: as ``EndpointOracle``.
    """

    def __init__(self, spec: EndpointSpec | str, *, token: str | bytes | None = None, budget: int | None = None,
                 input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None, seed: int = 0,
                 progress: bool = False, **fields):
        spec = make_spec(spec, fields)
        if spec.transport != "grpc":
            raise EndpointError(f"{spec.shown_url} is not a gRPC endpoint (grpc://host:port): use HttpOracle")
        self._auth = (("authorization", "Bearer " + check_token(token).decode()),) if token is not None else ()
        self._channel = grpc.insecure_channel(urlsplit(spec.url).netloc, options=[
            ("grpc.max_receive_message_length", spec.max_answer_bytes), ("grpc.max_send_message_length", -1)])
        self._stubs = {name: self._channel.unary_unary(f"/{proto.SERVICE}/{name}",
                                                       request_serializer=req.SerializeToString,
                                                       response_deserializer=resp.FromString)
                       for name, (req, resp) in proto.METHODS.items()}
        super().__init__(spec, budget=budget, input_shape=input_shape, num_classes=num_classes, seed=seed,
                         progress=progress)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, method: str, request):
        def attempt():
            try:
                return self._stubs[method](request, timeout=self.spec.timeout, metadata=self._auth)
            except grpc.RpcError as e:
                message = f"gRPC {e.code().name}: {' '.join(str(e.details()).split())[:300]}"
                if e.code() in TRANSIENT_CODES:
                    raise Transient(message) from None
                refused = EndpointUnreachable if e.code() in SERVER_FAILURE_CODES else EndpointError
                raise refused(f"endpoint {self.spec.shown_url} refused {method} ({message})") from None
        return self._retrying(method, attempt)

    def _metadata(self) -> dict:
        request = proto.ModelMetadataRequest(name=self.spec.model_name, version=self.spec.model_version or "")
        return metadata_dict(self._call("ModelMetadata", request))

    def server_metadata(self) -> dict:
        meta = self._call("ServerMetadata", proto.ServerMetadataRequest())
        return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}

    def _exchange(self, inputs: dict[str, np.ndarray], request_id: str) -> Mapping[str, np.ndarray]:
        request = proto.ModelInferRequest(model_name=self.spec.model_name, model_version=self.spec.model_version or "",
                                          id=request_id)
        write_tensors(inputs, request.inputs, request.raw_input_contents)
        for name in self.endpoint.outputs:
            request.outputs.add(name=name)
        answer = self._call("ModelInfer", request)
        try:
            return read_tensors(answer.outputs, list(answer.raw_output_contents), "outputs", answer.ByteSize())
        except EndpointError as e:
            raise EndpointError(f"endpoint returned malformed {self.endpoint.spec.output_kind}: {e}") from None
