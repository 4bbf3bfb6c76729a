"""Oracles: the only way a method or a verifier touches a model.

``TorchOracle`` gives white-box access to a local module; ``ProbabilitiesOracle`` and
``LabelsOracle`` wrap any oracle to expose less. Every oracle is batched, counts one query per
input answered, and refuses a call past its optional budget with ``QueryBudgetExceeded``::

    oracle = TorchOracle(model, (1, 28, 28), budget=10_000)
    black_box = LabelsOracle(oracle)
    black_box.labels(x)          # (N,) int64; black_box.queries == len(x)

``OnnxOracle`` (ONNX Runtime CPU; needs ``nnmark[onnx]``) and ``WorkerOracle`` (a model in a worker
subprocess with its own environment variables, e.g. ``ONEDNN_MAX_CPU_ISA``) give probabilities and labels.

``HttpOracle`` (REST, JSON or binary) and ``GrpcOracle`` (needs ``nnmark[grpc]``) ask a model behind an
Open Inference Protocol v2 endpoint described by an ``EndpointSpec``; ``connect(spec)`` picks by transport::

    with connect(EndpointSpec("grpc://127.0.0.1:8001", model_name="lenet"), token=b"s3cret") as oracle:
        oracle.probabilities(x)
"""

from nnmark.oracles.base import ACCESS_LEVELS, LabelsOracle, LogitsOracle, Oracle, ProbabilitiesOracle, check_inputs
from nnmark.oracles.endpoint import EndpointSpec
from nnmark.oracles.local import TorchOracle, model_oracle
from nnmark.oracles.onnx import OnnxOracle
from nnmark.oracles.remote import EndpointOracle, HttpOracle, connect
from nnmark.oracles.transformed import TransformedOracle
from nnmark.oracles.worker import WorkerOracle

__all__ = [
    "ACCESS_LEVELS", "EndpointOracle", "EndpointSpec", "GrpcOracle", "HttpOracle", "LabelsOracle", "LogitsOracle",
    "OnnxOracle", "Oracle", "ProbabilitiesOracle", "TorchOracle", "TransformedOracle", "WorkerOracle", "check_inputs",
    "connect", "model_oracle",
]


def __getattr__(name: str):
    """``GrpcOracle`` is imported on first use, so ``nnmark.oracles`` works without the grpc extra."""
    if name == "GrpcOracle":
        from nnmark.oracles.oip_grpc import GrpcOracle

        return GrpcOracle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
