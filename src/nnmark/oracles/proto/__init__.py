"""The OIP v2 gRPC messages (``inference.*``), built at import time from ``descriptor.py``.

``descriptor.py`` is generated from ``grpc_predict_v2.proto`` and shipped (``make proto`` regenerates it
with grpcio-tools); only ``protobuf`` is needed to run it. Every message of the .proto is an attribute:
``proto.ModelInferRequest``, ``proto.ModelMetadataResponse``, ...
"""

from __future__ import annotations

from google.protobuf import descriptor_pool, message_factory

from nnmark.oracles.proto.descriptor import SERIALIZED

SERVICE = "inference.GRPCInferenceService"
_POOL = descriptor_pool.DescriptorPool()
_FILE = _POOL.AddSerializedFile(SERIALIZED)
MESSAGES = {name: message_factory.GetMessageClass(d) for name, d in _FILE.message_types_by_name.items()}
METHODS = {m.name: (MESSAGES[m.input_type.name], MESSAGES[m.output_type.name])
           for m in _FILE.services_by_name["GRPCInferenceService"].methods}
"""Each RPC's (request class, response class), by method name."""

globals().update(MESSAGES)
__all__ = ["MESSAGES", "METHODS", "SERVICE", *MESSAGES]
