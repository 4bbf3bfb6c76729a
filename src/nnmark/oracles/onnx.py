"""An oracle over ONNX Runtime (CPU) running an ONNX export of a torch model.

The model is exported with the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17, dynamic batch axis) into an in-memory buffer (no file is written) and run by an
``onnxruntime.InferenceSession`` on the CPU execution provider at one graph optimisation level:
"all" (ORT_ENABLE_ALL, the default, fuses and reorders ops), "extended", "basic" or "disabled".
Its intra-op threads are pinned to the caller's ``torch.get_num_threads()`` (inter-op: 1), so it
competes for the same cores as torch would.

Answers: labels are the argmax of ONNX Runtime's float32 logits; probabilities are their softmax
computed by torch in float32 (as ``TorchOracle`` does for a float32 model), so every difference to
the "float32" environment comes from ONNX Runtime's kernels, not from the softmax. No gradients:
its access is "probabilities", so ``gradient`` raises ``AccessError`` (methods that need gradients take
them from a local white-box oracle).
Needs the optional extra ``nnmark[onnx]`` (onnx, onnxruntime).

Example::

    oracle = OnnxOracle(model, (1, 28, 28), optimization="disabled")
    y = oracle.labels(x)
"""

from __future__ import annotations

import io
import warnings

import torch

from nnmark._onnxrt import OPTIMIZATIONS, requirement, session
from nnmark.errors import InputError
from nnmark.oracles.base import LogitsOracle


def export(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> bytes:
    """The ONNX bytes of ``model`` (float32, input "input" (N, C, H, W), output "logits" (N, K))."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns that the TorchScript exporter is legacy
        torch.onnx.export(
            model.eval(), (torch.zeros(1, *input_shape),), buffer, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buffer.getvalue()


class OnnxOracle(LogitsOracle):
    """Labels and probabilities from ONNX Runtime (CPU) at graph optimisation level ``optimization``.

    Args:
        model: a float32 module mapping (N, C, H, W) in [0, 1] to logits (N, K); exported once, so later
            changes to it are not seen.
        input_shape: (C, H, W).
        num_classes: K (default: read from one run).
        optimization: one of ``OPTIMIZATIONS`` ("disabled", "basic", "extended", "all").
        budget: the most inputs answered in total (None: no limit).
    """

    access = "probabilities"

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, int, int], num_classes: int | None = None, *,
                 optimization: str = "all", budget: int | None = None):
        self.optimization = optimization
        self.session = session(export(model, input_shape), optimization)
        if num_classes is None:
            num_classes = self._run(torch.zeros(1, *input_shape)).shape[1]
        super().__init__(input_shape, num_classes, budget)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(["logits"], {"input": x.detach().to(torch.float32).contiguous().numpy()})
        return torch.from_numpy(out).float()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits (N, K), uncounted (callers spent the queries)."""
        out = self._run(x)
        if out.shape != (x.shape[0], self.num_classes):
            raise InputError(f"model returned shape {tuple(out.shape)}, expected ({x.shape[0]}, {self.num_classes})")
        return out
