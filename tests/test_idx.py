"""The idx reader (MNIST-style files, plain or gzip), Fashion-MNIST, and the owner/thief halves."""

import gzip
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nnmark import data
from nnmark.cli import main
from nnmark.data import idx
from nnmark.data.roles import halves
from nnmark.errors import DataError


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """``arr`` as an idx file: magic 00 00 code ndim, big-endian uint32 dims, big-endian values."""
    dtype = np.dtype(idx.DTYPES[code])
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dtype).tobytes()


def write_idx_folder(root, n_train=12, n_test=6, side=5, gz=False, labels=None) -> dict:
    """Four tiny idx files (classes 0..3) in ``root``; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 4 if labels is None else labels,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 4}
    for stem, arr in arrays.items():
        raw = idx_bytes(arr)
        (root / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_loads_plain_and_gzip_files_exactly(tmp_path, gz):
    arrays = write_idx_folder(tmp_path, gz=gz)
    ds = data.load(f"idx:{tmp_path}")
    assert ds.name == f"idx:{tmp_path}" and ds.num_classes == 4 and ds.shape == (1, 5, 5) and ds.classes is None
    assert len(ds.train) == 12 and len(ds.test) == 6
    assert torch.equal(ds.train.x[:, 0] * 255, torch.from_numpy(arrays["train-images-idx3-ubyte"]).float())
    assert ds.test.y.tolist() == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("code", sorted(idx.DTYPES))
def test_read_idx_reads_every_dtype_big_endian(tmp_path, code):
    arr = np.array([[1, 2, 300 if code in (0x0B, 0x0C) else 3], [4, 5, 6]])
    (tmp_path / "f").write_bytes(idx_bytes(arr, code))
    out = idx.read_idx(tmp_path / "f", "f")
    assert out.shape == (2, 3) and out.tolist() == arr.tolist() and out.dtype.isnative


def _header(code=0x08, dims=(2, 3)) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("raw, message", [
    (b"\0\0", "ends inside the magic"),
    (b"\x01\0\x08\x01" + bytes(8), "not an idx file"),
    (b"\0\0\x07\x01" + bytes(8), "not an idx file"),
    (b"\0\0\x08\x00", "not an idx file"),
    (b"\0\0\x08\x05" + bytes(40), "not an idx file"),
    (b"\0\0\x08\x02\0\0", "ends inside the dimensions"),
    (_header() + bytes(5), r"ends inside the \(2, 3\) values"),
    (_header() + bytes(7), "continue past"),
    (_header(0x0E, (1 << 16, 1 << 16)), "above the limit"),  # 32 GiB declared by a 12-byte file
])
@pytest.mark.parametrize("gz", [False, True])
def test_malformed_idx_files_give_one_line_data_errors(tmp_path, raw, message, gz):
    path = tmp_path / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=message) as err:
        idx.read_idx(path, "f")
    assert "\n" not in str(err.value)


def test_corrupt_gzip_streams_give_one_line_data_errors(tmp_path):
    raw = gzip.compress(_header(0x08, (100,)) + bytes(range(100)))
    for name, bad in (("flipped", raw[:12] + bytes(b ^ 0xFF for b in raw[12:-8]) + raw[-8:]),
                      ("bad-crc", raw[:-8] + bytes(8)), ("not-gzip", b"plain bytes")):
        (tmp_path / f"{name}.gz").write_bytes(bad)
        with pytest.raises(DataError, match=f"cannot read {name}.gz") as err:
            idx.read_idx(tmp_path / f"{name}.gz", "f")
        assert "\n" not in str(err.value)


def test_a_gzip_bomb_claiming_a_huge_array_is_read_only_as_far_as_it_holds_data(tmp_path, peak_memory):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(_header(0x08, (1 << 29, 1)) + bytes(100)))  # declares 512 MiB, holds 100 bytes

    def read():
        with pytest.raises(DataError, match="ends inside"):
            idx.read_idx(path, "f")
    assert peak_memory(read) < 64 << 20


def test_idx_folder_problems_are_named(tmp_path):
    write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(6, np.uint8))))
    with pytest.raises(DataError, match="both t10k-labels-idx1-ubyte and t10k-labels-idx1-ubyte.gz"):
        data.load(f"idx:{tmp_path}")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataError, match="6 images but t10k-labels-idx1-ubyte has 5 labels"):
        data.load(f"idx:{tmp_path}")
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte"):
        data.load(f"idx:{tmp_path}")
    with pytest.raises(DataError, match="not an existing folder"):
        data.load(f"idx:{tmp_path / 'nowhere'}")


def test_idx_images_must_be_uint8_and_labels_in_range(tmp_path):
    write_idx_folder(tmp_path, labels=np.array([0, 1, 2, 3] * 2 + [-1] * 4, dtype=np.int8))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0] * 11 + [-1]), 0x09))
    with pytest.raises(DataError, match="negative label -1"):
        data.load(f"idx:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((12, 5, 5)), 0x0D))
    with pytest.raises(DataError, match="must hold uint8 images"):
        data.load(f"idx:{tmp_path}")


def test_fashion_mnist_missing_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DataError) as err:
        data.load("fashion-mnist")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message and "dpkg -x" in message and "idx:" in message


def test_fashion_mnist_from_the_environment_variable_carries_class_names(tmp_path, monkeypatch):
    labels = np.arange(12, dtype=np.uint8) % 10
    write_idx_folder(tmp_path, gz=True, labels=labels)
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, str(tmp_path))
    ds = data.load("fashion-mnist")
    assert ds.num_classes == 10 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    conformed = data.conform(ds, SimpleNamespace(input_shape=(3, 8, 8), num_classes=10))
    assert conformed.shape == (3, 8, 8) and conformed.classes == ds.classes


@pytest.mark.skipif(not (idx.fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST not installed in {idx.fashion_mnist_dir()} (make fashion-mnist)")
def test_real_fashion_mnist_and_its_halves():
    ds = data.load("fashion-mnist")
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published file's first labels
    assert ds.train.y.bincount().tolist() == [6000] * 10 and ds.test.y.bincount().tolist() == [1000] * 10
    owner = data.load("fashion-mnist@owner")
    assert owner.name == "fashion-mnist@owner" and owner.train.y.bincount().tolist() == [3000] * 10
    assert torch.equal(owner.test.x, ds.test.x) and owner.classes == ds.classes


def test_halves_are_disjoint_stratified_deterministic_and_cover_the_training_set():
    n = 101
    x = (torch.arange(n, dtype=torch.float32) / n).reshape(n, 1, 1, 1)  # each image tells its index
    y = torch.arange(n) % 3
    ds = data.Dataset("tagged", data.Split(x, y), data.Split(x[:3], y[:3]), 3)
    owner, thief = halves(ds, seed=3)
    index = {name: (s.x.flatten() * n).round().long() for name, s in (("owner", owner), ("thief", thief))}
    assert sorted(torch.cat(list(index.values())).tolist()) == list(range(n))  # disjoint, and all of them
    assert torch.equal(owner.y, y[index["owner"]]) and torch.equal(thief.y, y[index["thief"]])
    assert owner.y.bincount().tolist() == [17, 17, 16] and thief.y.bincount().tolist() == [17, 17, 17]
    assert torch.equal(halves(ds, seed=3)[0].x, owner.x)
    assert not torch.equal(halves(ds, seed=4)[0].x, owner.x)


def test_owner_and_thief_specs_name_the_two_halves():
    owner, thief, whole = data.load("digits@owner"), data.load("digits@thief"), data.load("digits")
    expected_owner, expected_thief = halves(whole)
    assert torch.equal(owner.train.x, expected_owner.x) and torch.equal(thief.train.y, expected_thief.y)
    assert torch.equal(owner.test.x, whole.test.x) and owner.name == "digits@owner"
    with pytest.raises(DataError, match="unknown dataset spec"):
        data.load("digits@nobody")


def test_the_command_line_says_how_to_get_missing_fashion_mnist_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, str(tmp_path))
    r = CliRunner().invoke(main, ["train", "--arch", "lenet5", "--data", "fashion-mnist", "--epochs", "1", "--out",
                                  str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in r.stderr
    assert not (tmp_path / "m.safetensors").exists()
