"""The idx format (MNIST, Fashion-MNIST): a folder of four files, each plain or gzip-compressed.

An idx file is a 4-byte magic (two zero bytes, a dtype code, the number of dimensions), one big-endian
uint32 per dimension, then the values, big-endian, row-major. ``read_idx`` checks the magic, the dtype
code, the dimensions against ``MAX_IDX_BYTES`` and against what the file holds (no byte missing, none
left over) before it allocates anything, and reads a gzip stream only up to the size the header
promises, so a hostile file costs at most what its header states and that is capped.

A folder for ``idx:DIR`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each as it is or with ``.gz`` (not both).
Images are uint8 (N, H, W); labels integers (N,); the classes are 0 .. the largest label.

``fashion-mnist`` is that folder as Debian's ``dataset-fashion-mnist`` package installs it
(``FASHION_MNIST_DIR``, or the folder in the environment variable ``NNMARK_FASHION_MNIST``): 60,000 train /
10,000 test images, 1x28x28, 10 named classes.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from nnmark.data._checks import existing
from nnmark.data._types import Dataset, Split
from nnmark.errors import DataError, first_line

MAX_IDX_BYTES = 1 << 30
"""The most bytes of values one idx file may declare (Fashion-MNIST's training images: 47 MB)."""
MAX_DIMS = 4
READ_CHUNK = 1 << 24
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""idx dtype code -> numpy dtype (big-endian)."""
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "NNMARK_FASHION_MNIST"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_HELP = ("install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or without "
                      "root: apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb DIR, then "
                      f"set {FASHION_MNIST_ENV}=DIR/usr/share/datasets/fashion-mnist or use idx:that folder")


def read_idx(path: Path, source: str) -> np.ndarray:
    """The array in the idx file ``path`` (gzip-compressed if its name ends in .gz), in native byte order."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return _read_idx_stream(fh, source)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{source}: cannot read {path.name} ({first_line(exc)})") from exc


def _read_idx_stream(fh: BinaryIO, source: str) -> np.ndarray:
    magic = _read_exactly(fh, 4, source, "the magic number")
    if magic[:2] != b"\0\0" or magic[2] not in DTYPES or not 1 <= magic[3] <= MAX_DIMS:
        raise DataError(f"{source}: not an idx file (magic {magic.hex()}; expected 0000, a dtype code among "
                        f"{', '.join(f'{c:02x}' for c in DTYPES)}, and 1 to {MAX_DIMS} dimensions)")
    dtype = np.dtype(DTYPES[magic[2]])
    dims = tuple(int(d) for d in np.frombuffer(_read_exactly(fh, 4 * magic[3], source, "the dimensions"), ">u4"))
    size = math.prod(dims) * dtype.itemsize
    if size > MAX_IDX_BYTES:
        raise DataError(f"{source}: the header declares {dims} values of {dtype.itemsize} bytes ({size:,} bytes), "
                        f"above the limit of {MAX_IDX_BYTES:,}")
    values = _read_exactly(fh, size, source, f"the {dims} values the header declares")
    if fh.read(1):
        raise DataError(f"{source}: data continue past the {dims} values the header declares")
    return np.frombuffer(values, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_exactly(fh: BinaryIO, n: int, source: str, what: str) -> bytes:
    """``n`` bytes of ``fh``, read in chunks so that memory grows only with the bytes the file really holds."""
    chunks, got = [], 0
    while got < n and (chunk := fh.read(min(READ_CHUNK, n - got))):
        chunks.append(chunk)
        got += len(chunk)
    if got != n:
        raise DataError(f"{source}: file ends inside {what} ({got:,} of {n:,} bytes)")
    return b"".join(chunks)


def _idx_file(root: Path, stem: str, source: str) -> Path:
    found = [p for p in (root / stem, root / f"{stem}.gz") if p.is_file()]
    if not found:
        raise DataError(f"{source}: {root} has no {stem} (or {stem}.gz)")
    if len(found) > 1:
        raise DataError(f"{source}: {root} holds both {stem} and {stem}.gz; keep one")
    return found[0]


def _split(root: Path, part: str, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) of ``part`` ("train" or "test"), checked against each other."""
    images_stem, labels_stem = FILES[part]
    images = read_idx(_idx_file(root, images_stem, source), f"{source}: {images_stem}")
    labels = read_idx(_idx_file(root, labels_stem, source), f"{source}: {labels_stem}")
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{source}: {images_stem} must hold uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataError(f"{source}: {labels_stem} must hold integer labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{source}: {images_stem} has {len(images)} images but {labels_stem} has {len(labels)} labels")
    x = torch.from_numpy(images[:, None].astype(np.float32) / 255)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_idx(path: str, *, name: str, classes: tuple[str, ...] | None = None) -> Dataset:
    """The idx folder ``path`` (see the module docstring); ``classes`` names the classes and fixes their number."""
    root = existing(path, name, folder=True)
    (x, y), (x_test, y_test) = _split(root, "train", name), _split(root, "test", name)
    num_classes = len(classes) if classes else max(int(y.max()), int(y_test.max())) + 1
    return Dataset(name, Split(x, y), Split(x_test, y_test), num_classes, classes)


def fashion_mnist_dir() -> Path:
    """Where Fashion-MNIST is read from: ``$NNMARK_FASHION_MNIST`` if set, else ``FASHION_MNIST_DIR``."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def load_fashion_mnist(name: str = "fashion-mnist") -> Dataset:
    """Fashion-MNIST from ``fashion_mnist_dir()``; a DataError that says how to install it when it is missing."""
    root = fashion_mnist_dir()
    missing = [stem for stem in (*FILES["train"], *FILES["test"])
               if not (root / stem).is_file() and not (root / f"{stem}.gz").is_file()]
    if missing:
        raise DataError(f"{name}: {root} lacks {', '.join(missing)}; {FASHION_MNIST_HELP}")
    return load_idx(str(root), name=name, classes=FASHION_MNIST_CLASSES)
