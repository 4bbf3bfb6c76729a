"""Minimum useful settings and maximum sizes: a key that cannot work is refused, a short one says why."""

import pytest
import torch

from nnmark import keys, marks
from nnmark.errors import ArgumentError
from nnmark.keys import KeyFile
from nnmark.marks.integrity import baselines, dbi, pairing
from nnmark.marks.ownership import backdoor_wm, metafinger
from nnmark.marks.selfcheck import REMEDIES, self_check
from nnmark.oracles import TorchOracle


@pytest.fixture(scope="module")
def oracle(lenet, mnist):
    return TorchOracle(lenet, mnist.shape)


def test_dbi_needs_at_least_one_iteration(oracle, mnist):
    with pytest.raises(ArgumentError, match="itr must be >= 1"):
        dbi.create(oracle, mnist.test.x[:4], itr=0)
    assert len(dbi.create(oracle, mnist.test.x[:4], itr=dbi.MIN_ITR).expected) == 4


def test_huge_query_counts_are_refused_before_anything_is_allocated(oracle, peak_memory):
    def refuse(make, match):
        with pytest.raises(ArgumentError, match=match):
            make()

    cases = [
        (lambda: baselines.random_noise(oracle, 10**9), rf"n must be an integer in \[1, {keys.MAX_QUERIES}\]"),
        (lambda: pairing.create(oracle, 10**9, secret=b"s", user_id="u"), rf"\[1, {keys.MAX_QUERIES // 2}\]"),
        (lambda: backdoor_wm.make_triggers("abstract", 10**9, shape=(1, 28, 28), generator=torch.Generator()), "k must"),
        (lambda: baselines.random_noise(oracle, 0), "n must"),
        (lambda: baselines.random_noise(oracle, True), "n must"),
    ]
    for make, match in cases:
        assert peak_memory(lambda: refuse(make, match)) < 1_000_000
    assert len(baselines.random_noise(oracle, 3).expected) == 3


def test_metafinger_refuses_keys_that_cannot_decide():
    with pytest.raises(ArgumentError, match=r"p0 = 0.9 the smallest p-value of 10 queries is p0\^10 = 0.349"):
        metafinger.check_decidable(10, 0.9, 1e-3, "x")
    with pytest.raises(ArgumentError, match="no model could match: raise --n"):
        metafinger.check_decidable(metafinger.MIN_KEPT, 0.51, 1e-3, "raise --n")  # 0.51^10 = 1.2e-3
    with pytest.raises(ArgumentError, match=f"fewer than {metafinger.MIN_KEPT}"):
        metafinger.check_decidable(metafinger.MIN_KEPT - 1, 0.1, 1e-3, "x")
    metafinger.check_decidable(metafinger.MIN_KEPT, 0.1, 1e-3, "x")  # 1e-10 < 1e-3


def test_metafinger_refuses_a_small_n_before_training(mnist):
    with pytest.raises(ArgumentError, match=f"n >= {metafinger.MIN_KEPT}"):
        metafinger.Settings(n=metafinger.MIN_KEPT - 1)


def test_a_short_key_says_how_many_it_kept_and_why(oracle):
    key = pairing.create(oracle, 8, secret=b"s", user_id="u", max_itr=150, alpha=1e-5, max_steps=1)
    short = key.config[keys.SHORTFALL]
    assert short["asked"] == 8 and short["kept"] == key.config["n_pairs"] < 8
    assert f"{8 - short['kept']} did not cross the boundary within max_steps=1" in short["why"]
    assert "raise max_steps" in short["why"]
    assert keys.SHORTFALL not in keys.note_shortfall({}, 5, 5, "nothing dropped")


def test_self_check_passes_a_sound_key_and_names_the_fix_for_a_broken_one(oracle, mnist):
    key = baselines.natural(oracle, mnist.test.x[:20])
    assert self_check(oracle, key).passed
    wrong = KeyFile(key.method, key.config, key.queries, (key.expected + 1) % 10)
    with pytest.raises(ArgumentError, match="does not pass on the model it was made from .tampered") as e:
        self_check(oracle, wrong)
    assert REMEDIES["natural"] in str(e.value)
    pairs = pairing.create(oracle, 2, secret=b"s", user_id="u", max_itr=150, alpha=1e-5, max_steps=1000)
    assert self_check(oracle, pairs, secret=b"s").passed
    with pytest.raises(ArgumentError, match="raise --margin"):  # checked under another secret: every pair flips
        self_check(oracle, pairs, secret=b"another secret")


def test_every_method_has_a_remedy():
    assert set(REMEDIES) == set(marks.METHODS)
