"""Independent models of the source's own recipe, which an ownership key calibrates its false-claim bound on.

A key that states how often an independent model would be claimed needs draws of that null: models trained
as the source was (its architecture, the owner's labelled images, the same epochs) from other seeds, the
nearest independent models there are for SAC's queries (natural and CutMix images). SAC's keys (``sac``) train
them here; the decision's fitted null over them is ``stats.predictive_tail``. (Not for MetaFinger's: its queries
are pushed away from models of the source's architecture, so those are the farthest; see ``metafinger``.)
"""

from __future__ import annotations

import torch
from torch import nn

from nnmark import data
from nnmark.attacks.distill import fresh_copy
from nnmark.errors import ArgumentError, InputError
from nnmark.marks.ownership.shadow import DEFAULT_EPOCHS
from nnmark.models.card import ModelCard
from nnmark.models.training import train

SCRATCH_EPOCHS = DEFAULT_EPOCHS
"""Training epochs of each scratch model: the shadow pools' default (``nnmark mark``'s --shadow-epochs)."""
SCRATCH_DEVICE = "cpu"
"""Where the scratch models train unless told (``nnmark mark --device`` tells); they come back to the CPU, where the
key is made."""
SCRATCH_SEEDS = 4_000_000
"""How far above the key's seed the scratch models' seeds start (model i: ``seed + SCRATCH_SEEDS + i``), apart from
the pools' seeds, SAC's ``DISTILLED_SEEDS`` and the bench's (``bench.thefts.THEFT_SEEDS``, its independents' 1000 (s +
1) + ...): no scratch model starts from the initial weights of another model it is compared with."""


def scratch_models(source: nn.Module, owner: data.Split, k: int, *, epochs: int, seed: int,
                   device: str = SCRATCH_DEVICE) -> list[nn.Module]:
    """k independent models of the source's own recipe: its architecture re-initialised (``fresh_copy``) and trained
    from scratch (``models.training.train``) for ``epochs`` on the owner's labelled split, model i from seed ``seed +
    SCRATCH_SEEDS + i``; trained on ``device`` and returned on the CPU, where the key is made."""
    return [train(fresh_copy(source, s).to(device), owner, epochs=epochs, seed=s).eval().cpu()
            for s in range(seed + SCRATCH_SEEDS, seed + SCRATCH_SEEDS + k)]


def owner_dataset(images: torch.Tensor, num_classes: int, dataset: data.Dataset | None, meta: dict,
                  why: str) -> data.Dataset:
    """``dataset``, else the dataset ``meta["data"]`` names, whose training images must be ``images`` (the ones the
    caller gave); ``why`` says what needs it when neither is given."""
    if dataset is None:
        if "data" not in meta:
            raise ArgumentError(f"{why}: pass dataset")
        dataset = data.load_for(meta["data"], ModelCard(tuple(images.shape[1:]), num_classes))
        owner_split(images, dataset)
    return dataset


def owner_split(images: torch.Tensor, dataset: data.Dataset) -> data.Split:
    """``dataset``'s training split, checked to hold ``images`` (the owner's, which the caller gave)."""
    if dataset.train.x.shape != images.shape or not torch.equal(dataset.train.x, images):
        raise InputError(f"the training images given are not those of {dataset.name}; pass the owner's dataset")
    return dataset.train
