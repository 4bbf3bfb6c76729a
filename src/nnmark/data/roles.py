"""Who uses which images, so that a key's samples and an attacker's data never overlap.

- key sources for marks made from training images (DBI): ``dataset.train``;
- natural query samples (the "non-fragile" baseline): the first half of ``dataset.test``;
- the attacker's own labelled data (fine-tuning attacks): the second half of ``dataset.test``.

For ownership against a thief (model stealing), ``halves`` cuts the training set in two disjoint halves: the
owner trains on one, the thief holds the other; independent models train on either half or on all of it.
``data.load("SPEC@owner")`` / ``"SPEC@thief"`` is the dataset with that half as its training split.
"""

import torch

from nnmark.data._types import Dataset, Split

HALVES_SEED = 0
"""The seed of the halves a dataset spec's ``@owner`` / ``@thief`` names, fixed so that the two never overlap."""
ROLES = ("owner", "thief")


def _half(split: Split, first: bool) -> Split:
    cut = len(split) // 2
    return Split(split.x[:cut], split.y[:cut]) if first else Split(split.x[cut:], split.y[cut:])


def natural_pool(dataset: Dataset) -> Split:
    """Natural images for baseline keys: the first half of the test split."""
    return _half(dataset.test, first=True)


def attacker_data(dataset: Dataset) -> Split:
    """The attacker's data: the second half of the test split, disjoint from every key's samples."""
    return _half(dataset.test, first=False)


def halves(dataset: Dataset, seed: int = HALVES_SEED) -> tuple[Split, Split]:
    """(owner, thief): the training split cut in two disjoint halves, stratified by class.

    Each class's images are shuffled by a generator seeded with ``seed`` and the first ``n_c // 2`` go to the
    owner, the rest to the thief (who gets one more of each odd-sized class); both keep the original order.
    """
    y = dataset.train.y
    gen = torch.Generator().manual_seed(seed)
    owner = torch.zeros(len(y), dtype=torch.bool)
    for c in range(dataset.num_classes):
        members = torch.nonzero(y == c).flatten()
        owner[members[torch.randperm(len(members), generator=gen)[: len(members) // 2]]] = True
    x = dataset.train.x
    return Split(x[owner], y[owner]), Split(x[~owner], y[~owner])


def with_half(dataset: Dataset, role: str, name: str) -> Dataset:
    """``dataset`` named ``name`` whose training split is ``role``'s half (``halves`` at ``HALVES_SEED``)."""
    owner, thief = halves(dataset)
    train = owner if role == "owner" else thief
    return Dataset(name, train, dataset.test, dataset.num_classes, dataset.classes)
