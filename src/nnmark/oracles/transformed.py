"""An oracle behind an input transform: a suspect that preprocesses every query before its model sees it.

Paper: Yang et al., "MetaFinger" (IJCAI 2022), sec. 5.3 "Robustness against input modification":
the suspect runs resize-pad, noise or smoothing on each query (``nnmark.attacks.transforms``), and
the verifier only sees the answers.

Example::

    suspect = TransformedOracle(TorchOracle(model, (1, 28, 28)), MedianSmoothing(k=3))
    suspect.labels(key.queries)      # the model's labels on the smoothed queries
"""

from __future__ import annotations

from typing import Callable

import torch

from nnmark.errors import ArgumentError
from nnmark.oracles.base import Oracle


class TransformedOracle(Oracle):
    """Answers with ``inner``'s labels or probabilities on ``transform(x)``; counts and budgets its own queries.

    Access is the inner oracle's, but at most "probabilities": the suspect's preprocessing is opaque
    to the verifier (it may be random, like resize-pad, or not differentiable, like a median), so no
    input gradient through it can be had; gradients are refused with ``AccessError``.

    Args:
        inner: the oracle of the model behind the preprocessing (it counts its own queries too).
        transform: a callable (N, C, H, W) in [0, 1] -> same shape in [0, 1], e.g. from
            ``nnmark.attacks.transforms.TRANSFORMS``; applied once to the whole batch per call.
        budget: the most inputs this oracle answers in total; None for no limit.
    """

    def __init__(self, inner: Oracle, transform: Callable[[torch.Tensor], torch.Tensor], budget: int | None = None):
        if not callable(transform):
            raise ArgumentError(f"transform must be callable, got {type(transform).__name__}")
        super().__init__(inner.input_shape, inner.num_classes, budget)
        self.access = "probabilities" if inner.can("probabilities") else "labels"
        self.inner = inner
        self.transform = transform

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.labels(self.transform(x))

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.probabilities(self.transform(x))

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.predict(self.transform(x))
