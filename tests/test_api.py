"""The package's face: nnmark.mark / save_key / load_key / verify, thin over the registries."""

import subprocess
import sys

import pytest

import nnmark
from nnmark.attacks import weight_noise
from nnmark.errors import ArgumentError
from nnmark.oracles import LabelsOracle, TorchOracle


def test_mark_keep_verify_round_trip(lenet, lenet_file, mnist, tmp_path):
    key = nnmark.mark("dbi", lenet, mnist.train.x[:10], itr=100, eps=1e-3)
    assert key.method == "dbi" and key.model_digest
    nnmark.save_key(key, tmp_path / "dbi.key", secret=b"s3cret")
    key = nnmark.load_key(tmp_path / "dbi.key", secret=b"s3cret")
    assert nnmark.verify(key, str(lenet_file)).decision == "intact"
    assert nnmark.verify(key, LabelsOracle(TorchOracle(weight_noise(lenet, 3e-2, seed=0), mnist.shape))).decision == "tampered"


def test_pairs_need_the_secret_at_both_ends(lenet, mnist):
    key = nnmark.mark("pairs", lenet, n_pairs=4, secret=b"s3cret" * 3, user_id="alice", max_itr=50,
                      input_shape=mnist.shape)
    assert nnmark.verify(key, lenet, secret=b"s3cret" * 3).passed


def test_methods_that_train_are_refused_with_where_to_go(lenet, mnist):
    with pytest.raises(ArgumentError, match="metafinger key with its module"):
        nnmark.mark("metafinger", lenet, mnist.train.x[:4])


def test_importing_nnmark_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, nnmark; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_attack_is_a_thin_call_into_the_registry(lenet, mnist):
    key = nnmark.mark("natural", lenet, mnist.test.x[:20])
    noisy = nnmark.attack("noise", lenet, std=0.05, seed=0)
    assert noisy is not lenet and nnmark.verify(key, noisy, input_shape=mnist.shape).decision == "tampered"
    with pytest.raises(ArgumentError, match="unknown attack 'nonesuch'"):
        nnmark.attack("nonesuch", lenet)
