"""Who uses which images, so that a key's samples and an attacker's data never overlap.

- key sources for marks made from training images (DBI): ``dataset.train``;
- natural query samples (the "non-fragile" baseline): the first half of ``dataset.test``;
- the attacker's own labelled data (fine-tuning attacks): the second half of ``dataset.test``.
"""

from nnmark.data._types import Dataset, Split


def _half(split: Split, first: bool) -> Split:
    cut = len(split) // 2
    return Split(split.x[:cut], split.y[:cut]) if first else Split(split.x[cut:], split.y[cut:])


def natural_pool(dataset: Dataset) -> Split:
    """Natural images for baseline keys: the first half of the test split."""
    return _half(dataset.test, first=True)


def attacker_data(dataset: Dataset) -> Split:
    """The attacker's data: the second half of the test split, disjoint from every key's samples."""
    return _half(dataset.test, first=False)
