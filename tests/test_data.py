"""Tests for nnmark.data: bundled datasets, user files (CIFAR-10 pickles, npz, image folders), validation."""

import builtins
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnmark.data import Dataset, Split, load, validate
from nnmark.errors import DataError


def _check_well_formed(ds: Dataset) -> None:
    for split in (ds.train, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.is_contiguous() and split.y.is_contiguous()
        assert split.x.shape[1:] == ds.shape and len(split) == len(split.x) == len(split.y)
        assert 0.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
        assert 0 <= int(split.y.min()) and int(split.y.max()) < ds.num_classes


# --- bundled datasets ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load("mnist5k")


def test_mnist5k_shapes_dtype_range(mnist):
    assert mnist.name == "mnist5k" and mnist.num_classes == 10 and mnist.shape == (1, 28, 28)
    assert mnist.train.x.shape == (4000, 1, 28, 28) and mnist.test.x.shape == (1000, 1, 28, 28)
    assert mnist.train.y.shape == (4000,) and mnist.test.y.shape == (1000,)
    _check_well_formed(mnist)
    assert float(mnist.train.x.max()) == 1.0  # scaled by 1/255, not left in 0..255 or squashed


def test_mnist5k_split_is_fixed(mnist):
    again = load("mnist5k", seed=123)  # seed must not change the bundled split
    assert torch.equal(again.train.x, mnist.train.x) and torch.equal(again.train.y, mnist.train.y)
    assert torch.equal(again.test.x, mnist.test.x) and torch.equal(again.test.y, mnist.test.y)
    assert again.train.x.data_ptr() != mnist.train.x.data_ptr()  # fresh tensors each call
    # Pinned fingerprint: the split must be the same on every machine.
    assert mnist.test.y[:12].tolist() == [2, 5, 8, 1, 3, 3, 4, 0, 8, 0, 6, 3]
    assert int(mnist.test.y.sum()) == 4737


def test_mnist5k_all_classes_in_both_splits(mnist):
    assert set(mnist.train.y.tolist()) == set(range(10))
    assert set(mnist.test.y.tolist()) == set(range(10))


def test_digits():
    ds = load("digits", seed=5)
    assert ds.name == "digits" and ds.num_classes == 10 and ds.shape == (1, 8, 8)
    assert len(ds.train) == 1438 and len(ds.test) == 359
    _check_well_formed(ds)
    assert float(ds.train.x.max()) == 1.0
    assert torch.equal(load("digits").test.y, ds.test.y)
    assert ds.test.y[:12].tolist() == [6, 5, 5, 7, 9, 9, 8, 4, 6, 8, 6, 0]


@pytest.mark.parametrize("spec", ["mnist", "MNIST5K", "", "npz:", "cifar10", "csv:/tmp/a.csv", "mnist5k:x"])
def test_unknown_spec(spec):
    with pytest.raises(DataError, match="mnist5k, digits, fashion-mnist, cifar10:PATH, npz:PATH, folder:PATH, "
                                        "idx:PATH, each optionally followed by @owner or @thief"):
        load(spec)


# --- CIFAR-10 python folders --------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` opcodes, as the real CIFAR-10 files do."""

    def _py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch = {**pickle._Pickler.dispatch, str: _py2_str, bytes: _py2_str}


def _write_batch(path: Path, data: np.ndarray, labels: list[int], *, py2: bool = False) -> None:
    batch = {"batch_label": "batch", "labels": labels, "data": data, "filenames": ["f.png"] * len(labels)}
    if py2:
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(batch)
        # Python 2 numpy named the reconstructor numpy.core.multiarray.
        path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    else:
        path.write_bytes(pickle.dumps({k.encode(): v for k, v in batch.items()}))


def _cifar_folder(root: Path, batches: dict[str, int], *, py2: bool = False) -> dict[str, tuple[np.ndarray, list]]:
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, n in batches.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        _write_batch(root / name, data, labels, py2=py2)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("py2", [False, True], ids=["py3-pickle", "py2-pickle"])
def test_cifar10_layout(tmp_path, py2):
    written = _cifar_folder(tmp_path / "c", {"data_batch_1": 3, "data_batch_3": 2, "test_batch": 4}, py2=py2)
    ds = load(f"cifar10:{tmp_path / 'c'}")
    assert ds.name == f"cifar10:{tmp_path / 'c'}" and ds.num_classes == 10 and ds.shape == (3, 32, 32)
    assert len(ds.train) == 5 and len(ds.test) == 4
    _check_well_formed(ds)
    train_data = np.concatenate([written["data_batch_1"][0], written["data_batch_3"][0]])
    assert ds.train.y.tolist() == written["data_batch_1"][1] + written["data_batch_3"][1]
    assert ds.test.y.tolist() == written["test_batch"][1]
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major.
    for i, c, h, w in [(0, 0, 0, 0), (1, 0, 0, 31), (2, 1, 5, 7), (4, 2, 31, 31), (3, 2, 17, 3)]:
        assert ds.train.x[i, c, h, w].item() == pytest.approx(train_data[i, c * 1024 + h * 32 + w] / 255)
    test_data = written["test_batch"][0]
    assert ds.test.x[3, 1, 30, 2].item() == pytest.approx(test_data[3, 1024 + 30 * 32 + 2] / 255)


class _Payload:
    """Pickles as a call to ``func(arg)``: what an attacker's file would contain."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
    }


def test_payload_would_run_with_plain_pickle(tmp_path):
    """Sanity check that the malicious files below really are malicious."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_payloads(marker)["builtins.exec"]))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "builtins.eval"])
@pytest.mark.parametrize("batch", ["data_batch_1", "test_batch"])
def test_cifar10_malicious_pickle_is_refused(tmp_path, kind, batch):
    _cifar_folder(tmp_path / "c", {"data_batch_1": 2, "test_batch": 2})
    marker = tmp_path / "pwned"
    evil = {b"data": _payloads(marker)[kind], b"labels": [0]}
    (tmp_path / "c" / batch).write_bytes(pickle.dumps(evil))
    with pytest.raises(DataError, match=batch) as err:
        load(f"cifar10:{tmp_path / 'c'}")
    assert "refusing to unpickle" in str(err.value) and kind.split(".")[1] in str(err.value)
    assert not marker.exists()


def test_cifar10_missing_parts(tmp_path):
    with pytest.raises(DataError, match="not an existing folder"):
        load(f"cifar10:{tmp_path / 'nope'}")
    _cifar_folder(tmp_path / "a", {"test_batch": 2})
    with pytest.raises(DataError, match="data_batch_1"):
        load(f"cifar10:{tmp_path / 'a'}")
    _cifar_folder(tmp_path / "b", {"data_batch_2": 2})
    with pytest.raises(DataError, match="no test_batch"):
        load(f"cifar10:{tmp_path / 'b'}")


def test_cifar10_bad_batches(tmp_path):
    root = tmp_path / "c"
    _cifar_folder(root, {"data_batch_1": 2, "test_batch": 2})
    spec = f"cifar10:{root}"
    (root / "data_batch_1").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_1: not a readable pickle"):
        load(spec)
    _write_batch(root / "data_batch_1", np.zeros((2, 1024), np.uint8), [0, 1])
    with pytest.raises(DataError, match=r"shape \(N, 3072\)"):
        load(spec)
    _write_batch(root / "data_batch_1", np.zeros((2, 3072), np.uint8), [0, 1, 2])
    with pytest.raises(DataError, match="data has 2 images but labels has 3 labels"):
        load(spec)
    _write_batch(root / "data_batch_1", np.zeros((2, 3072), np.uint8), [0, 10])
    with pytest.raises(DataError, match="label 10"):
        load(spec)
    (root / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected a dict"):
        load(spec)


# --- npz files ----------------------------------------------------------------------------------


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.mark.parametrize(
    "shape, layout",
    [((20, 5, 6), "NHW"), ((20, 1, 5, 6), "NCHW"), ((20, 3, 5, 6), "NCHW"), ((20, 5, 6, 3), "NHWC"),
     ((20, 5, 6, 1), "NHWC"), ((20, 3, 5, 3), "NCHW")],  # last: ambiguous, read as NCHW
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_npz_layouts_and_dtypes(tmp_path, shape, layout, dtype):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=shape).astype(np.uint8)
    x = raw if dtype == np.uint8 else (raw / 255).astype(dtype)
    y = np.arange(20) % 4
    ds = load(_npz(tmp_path / "d.npz", x=x, y=y))
    nchw = raw[:, None] if layout == "NHW" else raw.transpose(0, 3, 1, 2) if layout == "NHWC" else raw
    assert ds.shape == nchw.shape[1:] and ds.num_classes == 4
    assert len(ds.train) == 16 and len(ds.test) == 4
    _check_well_formed(ds)
    # Every image keeps its own label and its pixels land in (C, H, W) order.
    expected = torch.from_numpy(nchw / 255).float()
    for split in (ds.train, ds.test):
        for img, label in zip(split.x, split.y):
            matches = [i for i in range(20) if torch.allclose(expected[i], img, atol=1e-6)]
            assert len(matches) == 1 and y[matches[0]] == label


def test_npz_split_follows_seed(tmp_path):
    spec = _npz(tmp_path / "d.npz", x=np.arange(50, dtype=np.uint8).reshape(50, 1, 1), y=np.arange(50) % 5)
    a, b, c = load(spec, seed=0), load(spec, seed=0), load(spec, seed=1)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.test.x, c.test.x)
    values = torch.cat([a.train.x.flatten(), a.test.x.flatten()]) * 255
    assert sorted(values.round().long().tolist()) == list(range(50))  # every image lands in exactly one split


def test_npz_with_test_arrays(tmp_path):
    x = np.linspace(0, 1, 6 * 4 * 4, dtype=np.float32).reshape(6, 4, 4)
    x_test = np.full((2, 4, 4), 0.5, dtype=np.float32)
    ds = load(_npz(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1, 0, 1]), x_test=x_test, y_test=np.array([2, 0])))
    assert ds.num_classes == 3 and ds.shape == (1, 4, 4)
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(x)) and ds.train.y.tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(x_test)) and ds.test.y.tolist() == [2, 0]
    _check_well_formed(ds)


GOOD_X = np.zeros((4, 3, 3), dtype=np.float32)
GOOD_Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((3, 3, 3), np.float32), "y": GOOD_Y}, "x has 3 images but y has 4 labels"),
        ({"x": np.full((4, 3, 3), 1.5, np.float32), "y": GOOD_Y}, r"x values must lie in \[0, 1\], found min 1.5"),
        ({"x": np.full((4, 3, 3), -0.1), "y": GOOD_Y}, r"must lie in \[0, 1\]"),
        ({"x": np.where(np.eye(3, dtype=bool), np.nan, 0.5)[None].repeat(4, 0), "y": GOOD_Y}, "NaN or infinite"),
        ({"x": np.full((4, 3, 3), np.inf), "y": GOOD_Y}, "NaN or infinite"),
        ({"x": GOOD_X, "y": np.array([0, -1, 0, 1])}, "negative label -1"),
        ({"x": GOOD_X}, r"no array named 'y' \(it has: x\)"),
        ({"y": GOOD_Y}, "no array named 'x'"),
        ({"x": GOOD_X, "y": GOOD_Y.astype(float)}, "integer class labels"),
        ({"x": GOOD_X, "y": GOOD_Y[:, None]}, "integer class labels"),
        ({"x": GOOD_X.astype(np.int32), "y": GOOD_Y}, "dtype int32; expected uint8"),
        ({"x": np.zeros((4, 5, 5, 5), np.float32), "y": GOOD_Y}, r"shape \(4, 5, 5, 5\)"),
        ({"x": np.zeros(4, np.float32), "y": GOOD_Y}, r"shape \(4,\)"),
        ({"x": np.zeros((0, 3, 3), np.float32), "y": GOOD_Y[:0]}, "no images"),
        ({"x": GOOD_X[:1], "y": GOOD_Y[:1]}, "at least 2 images"),
        ({"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X}, "both x_test and y_test"),
        ({"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X[:2], "y_test": GOOD_Y}, r"\(test\): x has 2 images but y has 4"),
        ({"x": GOOD_X, "y": GOOD_Y, "x_test": np.zeros((4, 2, 2), np.float32), "y_test": GOOD_Y},
         "train images are 1x3x3 but test images are 1x2x2"),
    ],
)
def test_npz_bad_contents(tmp_path, arrays, message):
    spec = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        load(spec)
    assert str(err.value).startswith(spec) and "\n" not in str(err.value)


def test_npz_object_array_is_refused(tmp_path):
    spec = _npz(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="cannot read array 'x'.*allow_pickle"):
        load(spec)


def test_npz_other_arrays_are_not_read(tmp_path):
    extra = np.array([{"a": 1}], dtype=object)
    ds = load(_npz(tmp_path / "d.npz", x=np.zeros((5, 2, 2), np.uint8), y=np.arange(5), meta=extra))
    assert len(ds.train) + len(ds.test) == 5 and ds.num_classes == 5


def test_npz_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not an existing file"):
        load(f"npz:{tmp_path / 'missing.npz'}")
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((40, 8, 8), np.float32), y=np.zeros(40, np.int64))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated.npz"):
        load(f"npz:{truncated}")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="cannot read .*garbage.npz"):
        load(f"npz:{garbage}")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DataError, match="single .npy array"):
        load(f"npz:{single}")
    with pytest.raises(DataError, match="not an existing file"):
        load(f"npz:{tmp_path}")


# --- image folders ------------------------------------------------------------------------------


def _image(path: Path, mode: str = "L", size=(6, 5), color=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_labels_follow_sorted_names(tmp_path):
    shades = {"cat": 30, "ant": 120, "bee": 240}  # sorted: ant=0, bee=1, cat=2
    for cls, shade in shades.items():
        for i in range(4):
            _image(tmp_path / cls / f"{i}.png", color=shade)
    (tmp_path / "README.txt").write_text("files at the top are ignored")
    (tmp_path / "ant" / ".hidden").write_text("hidden files are ignored")
    ds = load(f"folder:{tmp_path}", seed=3)
    assert ds.num_classes == 3 and ds.shape == (1, 5, 6)  # grayscale, H=5, W=6
    assert len(ds.train) == 10 and len(ds.test) == 2
    _check_well_formed(ds)
    by_label = {0: 120, 1: 240, 2: 30}
    for split in (ds.train, ds.test):
        for img, label in zip(split.x, split.y):
            assert torch.allclose(img, torch.full_like(img, by_label[int(label)] / 255))
    assert torch.equal(load(f"folder:{tmp_path}", seed=3).test.x, ds.test.x)


def test_folder_rgb_when_any_image_is_color(tmp_path):
    _image(tmp_path / "a" / "0.png", "L", color=100)
    _image(tmp_path / "a" / "1.png", "1", color=1)
    _image(tmp_path / "b" / "0.png", "RGB", color=(255, 0, 10))
    _image(tmp_path / "b" / "1.png", "RGBA", color=(0, 255, 0, 128))
    ds = load(f"folder:{tmp_path}")
    assert ds.shape == (3, 5, 6) and ds.num_classes == 2
    _check_well_formed(ds)
    pixels = {tuple((img[:, 0, 0] * 255).round().long().tolist()) for split in (ds.train, ds.test) for img in split.x}
    assert pixels == {(100, 100, 100), (255, 255, 255), (255, 0, 10), (0, 255, 0)}


def test_folder_mode_1_stays_grayscale(tmp_path):
    _image(tmp_path / "a" / "0.png", "1", color=1)
    _image(tmp_path / "b" / "0.png", "L", color=0)
    ds = load(f"folder:{tmp_path}")
    assert ds.shape == (1, 5, 6)
    assert sorted(float(s.x.max()) for s in (ds.train, ds.test)) == [0.0, 1.0]


def test_folder_with_train_and_test(tmp_path):
    for part, n in (("train", 3), ("test", 2)):
        for cls, shade in (("x", 10), ("y", 20)):
            for i in range(n):
                _image(tmp_path / part / cls / f"{i}.png", color=shade + (part == "test"))
    ds = load(f"folder:{tmp_path}")
    assert len(ds.train) == 6 and len(ds.test) == 4 and ds.num_classes == 2
    assert ds.train.y.tolist() == [0, 0, 0, 1, 1, 1] and ds.test.y.tolist() == [0, 0, 1, 1]
    assert (ds.train.x[:, 0, 0, 0] * 255).round().tolist() == [10, 10, 10, 20, 20, 20]
    assert (ds.test.x[:, 0, 0, 0] * 255).round().tolist() == [11, 11, 21, 21]
    _check_well_formed(ds)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not an existing folder"):
        load(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="no class subfolders"):
        load(f"folder:{tmp_path}")

    mixed = tmp_path / "mixed"
    _image(mixed / "a" / "0.png", size=(6, 5))
    _image(mixed / "b" / "big.png", size=(7, 5))
    with pytest.raises(DataError, match=r"big.png is 7x5 but .*0.png is 6x5; all images must be the same size"):
        load(f"folder:{mixed}")

    fake = tmp_path / "fake"
    _image(fake / "a" / "0.png")
    (fake / "b").mkdir()
    (fake / "b" / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match=r"cannot read image .*notes.png"):
        load(f"folder:{fake}")

    truncated = tmp_path / "truncated"
    _image(truncated / "a" / "0.png")
    _image(truncated / "b" / "0.png", size=(6, 5), color=7)
    png = (truncated / "b" / "0.png").read_bytes()
    (truncated / "b" / "0.png").write_bytes(png[: len(png) - 30])
    with pytest.raises(DataError, match=r"cannot read image .*b/0.png"):
        load(f"folder:{truncated}")

    empty = tmp_path / "empty"
    _image(empty / "a" / "0.png")
    (empty / "b").mkdir()
    with pytest.raises(DataError, match="has no images"):
        load(f"folder:{empty}")

    nested = tmp_path / "nested"
    _image(nested / "a" / "0.png")
    _image(nested / "b" / "sub" / "0.png")
    with pytest.raises(DataError, match="is not a file"):
        load(f"folder:{nested}")

    uneven = tmp_path / "uneven"
    _image(uneven / "train" / "a" / "0.png")
    _image(uneven / "test" / "b" / "0.png")
    with pytest.raises(DataError, match="same class folders"):
        load(f"folder:{uneven}")

    extra = tmp_path / "extra"
    for part in ("train", "test", "val"):
        _image(extra / part / "a" / "0.png")
    with pytest.raises(DataError, match="plus other folders"):
        load(f"folder:{extra}")


# --- validate and the containers ----------------------------------------------------------------


def test_validate_accepts_good_data():
    validate(torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 2]), 3)


@pytest.mark.parametrize(
    "x, y, num_classes, message",
    [
        (np.zeros((1, 1, 2, 2), np.float32), torch.tensor([0]), 1, "must be torch tensors"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.float64), torch.tensor([0]), 1, "float32"),
        (torch.zeros(1, 2, 2), torch.tensor([0]), 1, r"\(N, C, H, W\)"),
        (torch.zeros(1, 1, 2, 2), torch.tensor([0], dtype=torch.int32), 1, "int64"),
        (torch.zeros(1, 1, 2, 2), torch.tensor([[0]]), 1, r"int64 \(N,\)"),
        (torch.zeros(2, 1, 2, 2), torch.tensor([0]), 1, "x has 2 images but y has 1 labels"),
        (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64), 1, "no images"),
        (torch.full((1, 1, 2, 2), float("nan")), torch.tensor([0]), 1, "NaN or infinite"),
        (torch.full((1, 1, 2, 2), 1.01), torch.tensor([0]), 1, r"\[0, 1\]"),
        (torch.zeros(1, 1, 2, 2), torch.tensor([0]), 0, "num_classes must be at least 1"),
        (torch.zeros(1, 1, 2, 2), torch.tensor([-2]), 1, "negative label -2"),
        (torch.zeros(1, 1, 2, 2), torch.tensor([3]), 3, "label 3 but there are only 3 classes"),
    ],
)
def test_validate_rejects(x, y, num_classes, message):
    with pytest.raises(DataError, match=message):
        validate(x, y, num_classes, source="mine")


def test_dataset_validates_on_construction():
    good = Split(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))
    assert len(Dataset("d", good, good, 2).train) == 2
    with pytest.raises(DataError, match=r"d \(test\): y has label 1"):
        Dataset("d", Split(torch.zeros(1, 1, 2, 2), torch.tensor([0])), good, 1)


def test_split_makes_tensors_contiguous():
    split = Split(torch.zeros(2, 2, 3, 1).permute(0, 3, 1, 2), torch.zeros(4, dtype=torch.int64)[::2])
    assert split.x.is_contiguous() and split.y.is_contiguous() and len(split) == 2
