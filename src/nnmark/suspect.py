"""The suspect as a value, and the one way to ask it: a local model (``ModelSource``) or an endpoint
(``nnmark.oracles.EndpointSpec``), opened as an oracle by ``open_suspect``.

``nnmark verify``, ``identify`` and ``audit`` (in a fleet's worker threads too), ``nnmark.audit.run.local_target``
and ``endpoint_target``, and the Python API (``nnmark.verify``) all open their suspect here::

    with open_suspect(ModelSource("net.safetensors", normalize="imagenet"), env="float64") as (oracle, loaded):
        verdict = marks.verify(oracle, key)

Nothing here imports torch at module level: the command line's option parsing builds these values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from nnmark.models import LoadedModel
    from nnmark.oracles import EndpointSpec, Oracle

DEFAULT_ENV = "float32"
DEFAULT_DEVICE = "cpu"


@dataclass(frozen=True)
class ModelSource:
    """Where a local model comes from and what it expects (``models.load_any``'s arguments).

    Attributes:
        path: a model file of any source kind, or ``package.module:factory``.
        weights: a safetensors state dict for a factory model (loaded strictly).
        input_shape: (C, H, W), where the source does not say.
        normalize: what the model expects of pixels in [0, 1] (``models.card.NORMALIZE_HELP``); None: the card
            stored with the model (or the key's, see ``load``).
    """

    path: str
    weights: str | None = None
    input_shape: tuple[int, int, int] | None = None
    normalize: str | None = None

    def load(self, card: dict | None = None) -> LoadedModel:
        """The model in pixel space; ``card`` (a key's model card) supplies the input shape and normalisation
        this source does not give."""
        from nnmark import models

        known = models.ModelCard.from_dict(card) if card else None
        shape = self.input_shape or (known.input_shape if known else None)
        normalize = self.normalize if self.normalize is not None or known is None else known.normalize
        return models.load_any(self.path, weights=self.weights, input_shape=shape, normalize=normalize)


Suspect = Union[ModelSource, "EndpointSpec"]
"""A model to ask: a local source, or an OIP v2 endpoint."""


def described(suspect: Suspect, env: str = DEFAULT_ENV, device: str = DEFAULT_DEVICE) -> dict:
    """How reports name ``suspect``: {"model", "env", "device"}, or {"endpoint" (without user info), "model_name"}."""
    if isinstance(suspect, ModelSource):
        return {"model": suspect.path, "env": env, "device": device}
    return {"endpoint": suspect.shown_url, "model_name": suspect.model_name}


@contextlib.contextmanager
def open_suspect(suspect: Suspect, *, env: str = DEFAULT_ENV, device: str = DEFAULT_DEVICE, token: bytes | None = None,
                 budget: int | None = None, card: dict | None = None, progress: bool = False,
                 batch_size: int | None = None) -> Iterator[tuple[Oracle, LoadedModel | None]]:
    """Yield (oracle, the local model's ``LoadedModel``, None for an endpoint); the oracle is closed afterwards.

    A local model runs in environment ``env`` on ``device`` (``envs.resolve_device`` checked it); an endpoint is asked with the bearer ``token`` and shows
    ``progress``; ``budget`` caps the queries of either. ``card`` (a key's model card) gives a local model the input
    shape and normalisation its source does not, and states the input shape and classes an endpoint must have.
    ``batch_size``: a local model's micro-batch, where its environment sets none (an endpoint's is its spec's).
    """
    if isinstance(suspect, ModelSource):
        from nnmark import envs
        from nnmark.oracles import TorchOracle

        loaded = suspect.load(card)
        with envs.get(env).oracle(loaded.model, loaded.input_shape, budget=budget, device=device) as oracle:
            if isinstance(oracle, TorchOracle) and oracle.batch_size is None:
                oracle.batch_size = batch_size
            yield oracle, loaded
        return
    from nnmark.oracles import connect

    known = {"input_shape": tuple(card["input_shape"]), "num_classes": card["num_classes"]} if card else {}
    with connect(suspect, token=token, budget=budget, progress=progress, **known) as oracle:
        yield oracle, None
