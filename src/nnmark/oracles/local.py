"""A white-box oracle over a local ``torch.nn.Module``, with the numerics knobs environments vary."""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch

from nnmark.errors import InputError
from nnmark.oracles.base import LossFn, Oracle

# torch warns about Intel-GPU TF32 whenever oneDNN flags are toggled on a CPU build: not ours to act on.
warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")


class TorchOracle(Oracle):
    """White-box access to a local model: labels, probabilities and input gradients.

    Args:
        model: a module mapping (N, C, H, W) inputs in [0, 1] to logits (N, K); put in eval mode.
        input_shape: (C, H, W).
        num_classes: K; read from one forward pass when None.
        budget: the most inputs answered in total (None: no limit).
        dtype: the floating type the model runs in (float32, float64, bfloat16).
        mkldnn: False runs every call with oneDNN (mkldnn) disabled.
        batch_size: inputs per forward call; None answers a whole batch in one call, 1 one sample per call.

    Labels are the argmax of the logits in ``dtype``; probabilities are its softmax returned as float32,
    as an endpoint would send them.
    """

    access = "gradients"

    def __init__(
        self,
        model: torch.nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int | None = None,
        *,
        budget: int | None = None,
        dtype: torch.dtype = torch.float32,
        mkldnn: bool = True,
        batch_size: int | None = None,
    ):
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None")
        self.model = model.eval()
        self.dtype = dtype
        self.mkldnn = mkldnn
        self.batch_size = batch_size
        if dtype != torch.float32:
            self.model = copy.deepcopy(self.model).to(dtype)
        if num_classes is None:
            with torch.no_grad(), self._numerics():
                num_classes = self.model(torch.zeros(1, *input_shape, dtype=dtype)).shape[1]
        super().__init__(input_shape, num_classes, budget)

    def _numerics(self):
        return contextlib.nullcontext() if self.mkldnn else torch.backends.mkldnn.flags(enabled=False)

    def _chunks(self, x: torch.Tensor):
        step = x.shape[0] if self.batch_size is None else self.batch_size
        return x.split(step)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) in ``dtype``, uncounted: for callers that already spent the queries."""
        with torch.no_grad(), self._numerics():
            out = torch.cat([self.model(c.to(self.dtype)) for c in self._chunks(x)])
        if out.shape != (x.shape[0], self.num_classes):
            raise InputError(f"model returned shape {tuple(out.shape)}, expected ({x.shape[0]}, {self.num_classes})")
        return out

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1).float()

    def _gradient(self, loss_fn: LossFn, x: torch.Tensor, on: str) -> tuple[torch.Tensor, torch.Tensor]:
        losses, grads = [], []
        with self._numerics():
            for c in self._chunks(x):
                c = c.detach().to(self.dtype).requires_grad_(True)
                out = self.model(c)
                loss = loss_fn(torch.softmax(out, dim=1) if on == "probabilities" else out)
                if loss.shape != (c.shape[0],):
                    raise ValueError(f"loss_fn must return one value per sample, got shape {tuple(loss.shape)}")
                (g,) = torch.autograd.grad(loss.sum(), c)
                losses.append(loss.detach())
                grads.append(g)
        return torch.cat(losses).to(x.dtype), torch.cat(grads).to(x.dtype)
