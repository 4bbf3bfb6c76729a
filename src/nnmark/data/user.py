"""Loaders for datasets the user supplies: a CIFAR-10 python folder, an .npz file, an image folder."""

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from nnmark.data._checks import existing
from nnmark.data._safe_pickle import read_numpy_pickle
from nnmark.data._types import Dataset, Split, random_split
from nnmark.data.conform import DEFAULT_INTERPOLATION, PIL_RESAMPLE, check_interpolation, image_mode
from nnmark.errors import DataError, first_line

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_NPZ_KEYS = ("x", "y", "x_test", "y_test")
_GRAY_MODES = {"L", "1"}
T = TypeVar("T")


def load_cifar10(path: str, *, name: str) -> Dataset:
    """CIFAR-10 in its python format: ``test_batch`` plus any of ``data_batch_1..5`` (at least one).

    Batches are read with a numpy-only unpickler; ``batches.meta`` is not needed and not read.
    Images are (3, 32, 32) in [0, 1]; there are 10 classes.
    """
    root = existing(path, name, folder=True)
    train_files = [root / f for f in _CIFAR_TRAIN if (root / f).is_file()]
    if not train_files:
        raise DataError(f"{name}: {root} has none of data_batch_1 .. data_batch_5")
    if not (root / "test_batch").is_file():
        raise DataError(f"{name}: {root} has no test_batch file")
    xs, ys = zip(*(_cifar_batch(f, name) for f in train_files))
    return Dataset(name, Split(torch.cat(xs), torch.cat(ys)), Split(*_cifar_batch(root / "test_batch", name)), 10)


def _cifar_batch(file: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    source = f"{name}: {file.name}"
    batch = read_numpy_pickle(file, source)
    if not isinstance(batch, dict):
        raise DataError(f"{source}: holds a {type(batch).__name__}, expected a dict with data and labels")
    data = batch.get(b"data", batch.get("data"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, 3072)")
    y = _labels(batch.get(b"labels", batch.get("labels")), source, "labels")
    if len(y) != len(data):
        raise DataError(f"{source}: data has {len(data)} images but labels has {len(y)} labels")
    return _unit(data.reshape(-1, 3, 32, 32)), y


def load_npz(path: str, *, name: str, seed: int) -> Dataset:
    """An .npz (read with ``allow_pickle=False``) holding ``x``, ``y`` and optionally ``x_test``, ``y_test``.

    ``x`` is (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}; when both axis 1 and axis 3
    could be C (e.g. (N, 3, 5, 3)) it is read as (N, C, H, W). uint8 is divided by 255; floating
    point must already lie in [0, 1]. ``y`` holds integer labels and num_classes is the largest
    label + 1. Without ``x_test``/``y_test``, 20% of the images, chosen by ``seed``, become the
    test split. Other arrays in the file are not read.
    """
    file = existing(path, name, folder=False)
    arrays = _read_npz(file, name)
    x, y = _npz_images(arrays["x"], name, "x"), _labels(arrays["y"], name, "y")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{name}: {file.name} must hold both x_test and y_test, or neither")
    if "x_test" not in arrays:
        return random_split(name, x, y, _num_classes(y), seed)
    x_test, y_test = _npz_images(arrays["x_test"], name, "x_test"), _labels(arrays["y_test"], name, "y_test")
    return Dataset(name, Split(x, y), Split(x_test, y_test), _num_classes(y, y_test))


def _read_npz(file: Path, name: str) -> dict[str, np.ndarray]:
    with file.open("rb") as fh:  # our own handle, so a failed np.load cannot leak it
        try:
            npz = np.load(fh, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{name}: cannot read {file} as .npz ({first_line(exc)})") from exc
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{name}: {file} is a single .npy array, not an .npz archive holding x and y")
        with npz:
            for key in ("x", "y"):
                if key not in npz.files:
                    found = ", ".join(npz.files) or "none"
                    raise DataError(f"{name}: {file.name} has no array named {key!r} (it has: {found})")
            arrays = {}
            for key in (k for k in _NPZ_KEYS if k in npz.files):
                try:
                    arrays[key] = npz[key]
                except Exception as exc:
                    raise DataError(f"{name}: cannot read array {key!r} from {file} ({first_line(exc)})") from exc
    return arrays


def _npz_images(arr: np.ndarray, name: str, key: str) -> torch.Tensor:
    if arr.dtype != np.uint8 and arr.dtype.kind != "f":
        raise DataError(f"{name}: {key} has dtype {arr.dtype}; expected uint8 (0..255) or floating point (0..1)")
    if arr.ndim == 3:
        return _unit(arr[:, None])
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        return _unit(arr)
    if arr.ndim == 4 and arr.shape[3] in (1, 3):
        return _unit(arr.transpose(0, 3, 1, 2))
    raise DataError(
        f"{name}: {key} has shape {arr.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C) with C 1 or 3"
    )


def _num_classes(*ys: torch.Tensor) -> int:
    return max((int(y.max()) for y in ys if y.numel()), default=-1) + 1


def load_folder(path: str, *, name: str, seed: int, shape: tuple[int, int, int] | None = None,
                interpolation: str = DEFAULT_INTERPOLATION) -> Dataset:
    """Images in one subfolder per class; class index follows the sorted subfolder names.

    If the folder holds exactly ``train/`` and ``test/``, each must hold the same class subfolders;
    otherwise 20% of the images, chosen by ``seed``, become the test split. Every non-hidden file in
    a class folder must be an image Pillow can read (else DataError naming it). Without ``shape`` all
    images must share one size, and are grayscale (C=1) if every one has mode "L" or "1", else all
    are converted to RGB (C=3). With ``shape`` (C, H, W) every image is decoded as C channels and
    resized to W x H by Pillow with ``interpolation`` (one of ``conform.INTERPOLATIONS``).
    Names starting with "." and files directly in the top folder are skipped.
    """
    root = existing(path, name, folder=True)
    top = _subfolders(root)
    if "train" in top and "test" in top:
        if len(top) > 2:
            raise DataError(f"{name}: {root} has train/ and test/ plus other folders; expected only those two")
        classes = _subfolders(root / "train")
        if _subfolders(root / "test") != classes:
            raise DataError(f"{name}: train/ and test/ in {root} must hold the same class folders")
        train = _labelled_files(root / "train", classes, name)
        x, y = _read_images(train + _labelled_files(root / "test", classes, name), name, shape, interpolation)
        n = len(train)
        return Dataset(name, Split(x[:n].clone(), y[:n].clone()), Split(x[n:].clone(), y[n:].clone()), len(classes))
    x, y = _read_images(_labelled_files(root, top, name), name, shape, interpolation)
    return random_split(name, x, y, len(top), seed)


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _labelled_files(base: Path, classes: list[str], name: str) -> list[tuple[Path, int]]:
    if not classes:
        raise DataError(f"{name}: {base} has no class subfolders")
    out = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (base / cls).iterdir() if not p.name.startswith("."))
        if not files:
            raise DataError(f"{name}: class folder {base / cls} has no images")
        for f in files:
            if not f.is_file():
                raise DataError(f"{name}: {f} is not a file; class folders must hold only images")
            out.append((f, label))
    return out


def _read_images(files: list[tuple[Path, int]], name: str, shape: tuple[int, int, int] | None,
                 interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    headers = [_open(f, name, lambda im: (im.size, im.mode)) for f, _ in files]
    if shape is None:
        size, first = headers[0][0], files[0][0]
        for (f, _), (sz, _) in zip(files, headers):
            if sz != size:
                raise DataError(f"{name}: {f} is {sz[0]}x{sz[1]} but {first} is {size[0]}x{size[1]}; all images must "
                                "be the same size")
        mode = "L" if all(m in _GRAY_MODES for _, m in headers) else "RGB"
    else:
        check_interpolation(interpolation)
        mode, size = image_mode(shape[0]), (shape[2], shape[1])

    def decode(im: Image.Image) -> np.ndarray:
        im = im.convert(mode)
        return np.asarray(im if im.size == size else im.resize(size, PIL_RESAMPLE[interpolation]))

    pixels = np.empty((len(files), size[1], size[0], 1 if mode == "L" else 3), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        pixels[i] = _open(f, name, decode).reshape(pixels.shape[1:])
    return _unit(pixels.transpose(0, 3, 1, 2)), torch.tensor([label for _, label in files], dtype=torch.int64)


def _open(file: Path, name: str, read: Callable[[Image.Image], T]) -> T:
    """Apply ``read`` to the opened image, turning any Pillow failure into a DataError naming ``file``."""
    try:
        with Image.open(file) as im:
            return read(im)
    except Exception as exc:
        raise DataError(f"{name}: cannot read image {file} ({first_line(exc)})") from exc


def _labels(labels: object, source: str, key: str) -> torch.Tensor:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise DataError(f"{source}: {key} must be a 1-D sequence of integer class labels, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr.astype(np.int64))


def _unit(arr: np.ndarray) -> torch.Tensor:
    """A contiguous float32 tensor of ``arr``; uint8 values are divided by 255."""
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype == np.uint8:
        out /= 255
    return torch.from_numpy(out)
