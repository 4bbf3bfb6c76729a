"""The Split and Dataset containers, and the seeded 80/20 train/test split."""

from dataclasses import dataclass

import torch

from nnmark.data._checks import validate
from nnmark.errors import DataError

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """Images ``x`` (float32, (N, C, H, W), values in [0, 1]) and labels ``y`` (int64, (N,)).

    Both tensors are made contiguous on construction.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", self.x.contiguous())
        object.__setattr__(self, "y", self.y.contiguous())

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A named train/test pair; construction validates both splits against ``num_classes``.

    ``classes``: the class names, in label order, where the data name them (e.g. Fashion-MNIST).
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise DataError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")
        validate(self.train.x, self.train.y, self.num_classes, source=f"{self.name} (train)")
        validate(self.test.x, self.test.y, self.num_classes, source=f"{self.name} (test)")
        if self.train.x.shape[1:] != self.test.x.shape[1:]:
            raise DataError(
                f"{self.name}: train images are {_chw(self.train.x)} but test images are {_chw(self.test.x)}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.train.x.shape[1:]
        return (c, h, w)


def _chw(x: torch.Tensor) -> str:
    return "x".join(str(d) for d in x.shape[1:])


def random_split(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> Dataset:
    """Validate ``x``/``y``, then hold out ``round(0.2 * N)`` images (at least 1) as the test split.

    The split is a ``torch.randperm`` drawn from a CPU ``torch.Generator`` seeded with ``seed``, so it is
    the same on every machine for the pinned torch version.
    """
    validate(x, y, num_classes, source=name)
    n = len(x)
    if n < 2:
        raise DataError(f"{name}: need at least 2 images to split into train and test, found {n}")
    n_test = min(max(round(n * TEST_FRACTION), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return Dataset(name, Split(x[train], y[train]), Split(x[test], y[test]), num_classes)
