"""The oracle interface: the only way a method or a verifier touches a model.

An oracle answers a whole batch of inputs per call, counts every input it answers as one query,
and refuses (``QueryBudgetExceeded``) a call that would take it past its budget. Its ``access``
says what it can give: ``"internals"`` (a local module: gradients and hidden activations),
``"gradients"``, ``"probabilities"`` or ``"labels"``.
"""

from __future__ import annotations

from typing import Callable

import torch

from nnmark.errors import AccessError, ArgumentError, InputError, QueryBudgetExceeded

ACCESS_LEVELS = ("labels", "probabilities", "gradients", "internals")

LossFn = Callable[..., torch.Tensor]
"""Maps model outputs (N, K), and the matching rows of each per-sample tensor it was given, to one loss value per
sample (N,)."""


def check_inputs(x: torch.Tensor, input_shape: tuple[int, int, int]) -> None:
    """Raise ``InputError`` unless ``x`` is a finite float (N, C, H, W) batch in [0, 1] of ``input_shape``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"queries must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"queries must be floating point, got {x.dtype}")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(input_shape) or x.shape[0] == 0:
        raise InputError(f"queries must have shape (N>=1, {', '.join(map(str, input_shape))}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("queries contain NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise InputError(f"queries must lie in [0, 1], got values in [{x.min().item():.4g}, {x.max().item():.4g}]")


class Oracle:
    """A model behind a counted, budgeted, batched query interface.

    Args:
        input_shape: (C, H, W) of one input.
        num_classes: K, the length of a probability vector.
        budget: the most inputs this oracle will answer in total; None for no limit.
    """

    access: str = "labels"
    gives_logits: bool = False

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, budget: int | None = None):
        if budget is not None and budget < 0:
            raise ArgumentError("budget must be >= 0 or None")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.budget = budget
        self.queries = 0

    def can(self, access: str) -> bool:
        """Whether this oracle gives ``access`` ("labels" < "probabilities" < "gradients" < "internals")."""
        return ACCESS_LEVELS.index(self.access) >= ACCESS_LEVELS.index(access)

    def _spend(self, x: torch.Tensor) -> None:
        """Check the inputs and count what answering them costs, all before anything is asked."""
        check_inputs(x, self.input_shape)
        n = self._cost(x.shape[0])
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"query budget exceeded: {self.queries} spent + {n} asked > budget {self.budget}"
            )
        self.queries += n

    def _cost(self, n: int) -> int:
        """Queries that answering ``n`` inputs costs; an oracle that re-asks some (a consistency check) adds them."""
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Top-1 labels (N,) int64."""
        self._spend(x)
        return self._labels(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax outputs (N, K) float32."""
        if not self.can("probabilities"):
            raise AccessError(f"{type(self).__name__} gives labels only, not probabilities")
        self._spend(x)
        return self._probabilities(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (N, K), counted like every other answer; only oracles over a model give them."""
        if not self.gives_logits:
            raise AccessError(f"{type(self).__name__} gives no logits")
        self._spend(x)
        return self._logits(x)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities (N, K) float32 and labels (N,) int64 of one set of queries, counted once.

        The labels are the oracle's own (e.g. argmax of float64 logits), not the argmax of the float32
        probabilities, which can tie where the model's own outputs do not.
        """
        if not self.can("probabilities"):
            raise AccessError(f"{type(self).__name__} gives labels only, not probabilities")
        self._spend(x)
        return self._predict(x)

    def gradient(self, loss_fn: LossFn, x: torch.Tensor, *, on: str = "probabilities",
                 per_sample: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample loss (N,) and its input gradient (N, C, H, W) in one forward/backward per micro-batch.

        ``loss_fn`` receives the probabilities (``on="probabilities"``) or the logits (``on="logits"``) of a
        micro-batch, then the same rows of each ``per_sample`` tensor (N, ...) (e.g. each sample's label), so a
        loss never sees another micro-batch's rows.
        """
        if any(len(t) != len(x) for t in per_sample):
            raise ArgumentError("every per_sample tensor needs one row per input")
        if not self.can("gradients"):
            raise AccessError(f"{type(self).__name__} gives no gradients (access: {self.access})")
        if on not in ("probabilities", "logits"):
            raise ArgumentError("on must be 'probabilities' or 'logits'")
        self._spend(x)
        return self._gradient(loss_fn, x, on, per_sample)

    def for_client(self, name: str) -> Oracle:
        """This oracle as a served API's client ``name`` reaches it: itself, unless its answers record who asked
        (``dawn.DawnOracle``)."""
        return self

    def seen_through(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> Oracle:
        """The same model asked ``transform(x)`` for each query x (which may leave [0, 1]): what it answers when an
        endpoint misreads its inputs. Only oracles over a local module can (access "internals")."""
        raise AccessError(f"{type(self).__name__} cannot show its model other inputs (access: {self.access})")

    def close(self) -> None:
        """Release what the oracle holds (a worker process, an HTTP client); a no-op for in-process oracles."""

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._probabilities(x).argmax(dim=1)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        raise AccessError(f"{type(self).__name__} gives no probabilities")

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass for both answers; an oracle whose labels are not the argmax of its float32
        probabilities (e.g. a float64 model) overrides this."""
        p = self._probabilities(x)
        return p, p.argmax(dim=1)

    def _gradient(self, loss_fn: LossFn, x: torch.Tensor, on: str,
                  per_sample: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        raise AccessError(f"{type(self).__name__} gives no gradients")


class LogitsOracle(Oracle):
    """An oracle over a model whose logits it can compute: labels are their argmax, probabilities their
    softmax (widened to float32), both from one pass. Subclasses implement ``_logits`` (uncounted)."""

    gives_logits = True

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x).argmax(dim=1)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._logits(x), dim=1).float()

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._logits(x)
        return torch.softmax(z, dim=1).float(), z.argmax(dim=1)


class _Restricted(Oracle):
    """Wraps any oracle and exposes at most ``access``; counts and budgets its own queries."""

    def __init__(self, inner: Oracle, budget: int | None = None):
        if not inner.can(self.access):
            raise AccessError(f"cannot give {self.access} from an oracle with access {inner.access}")
        super().__init__(inner.input_shape, inner.num_classes, budget)
        self.inner = inner

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.labels(x)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.probabilities(x)

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.predict(x)


class ProbabilitiesOracle(_Restricted):
    """A black box that returns probability vectors (no gradients)."""

    access = "probabilities"


class LabelsOracle(_Restricted):
    """A black box that returns top-1 labels only."""

    access = "labels"
