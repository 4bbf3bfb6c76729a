"""ONNX Runtime sessions on the CPU, shared by the ONNX oracle (an export of a torch model) and ONNX model files.

Needs the optional extra ``nnmark[onnx]`` (onnx, onnxruntime).
"""

from __future__ import annotations

import torch

from nnmark.errors import ArgumentError, NnmarkError

OPTIMIZATIONS = ("disabled", "basic", "extended", "all")
DEFAULT_OPTIMIZATION = "all"
_FATAL_ONLY = 4  # ONNX Runtime's log severity: 0 verbose .. 3 error, 4 fatal


def requirement() -> str | None:
    """Why ONNX models cannot run here (onnx or onnxruntime not importable), else None."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnx or onnxruntime is not installed (pip install 'nnmark[onnx]'): {e}"
    return None


def session(onnx_bytes: bytes, optimization: str = DEFAULT_OPTIMIZATION):
    """An ``onnxruntime.InferenceSession`` over ``onnx_bytes`` on the CPU execution provider.

    ``optimization`` is one of OPTIMIZATIONS (ORT_DISABLE_ALL .. ORT_ENABLE_ALL). Intra-op threads follow
    ``torch.get_num_threads()`` (inter-op: 1), so it competes for the same cores as torch would.
    """
    if optimization not in OPTIMIZATIONS:
        raise ArgumentError(f"optimization must be one of {OPTIMIZATIONS}, got {optimization!r}")
    reason = requirement()
    if reason is not None:
        raise NnmarkError(reason)
    import onnxruntime as ort

    ort.set_default_logger_severity(_FATAL_ONLY)  # errors reach the user as nnmark's one line, not as ORT's log
    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = _FATAL_ONLY
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
