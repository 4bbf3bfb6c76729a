"""The method declarations: every key method has one, and marks.verify checks the declared access once."""

import pytest
import torch

from nnmark import keys, marks
from nnmark.errors import AccessError, KeyFileError
from nnmark.marks.integrity import baselines
from nnmark.oracles import LabelsOracle, TorchOracle


def test_every_method_is_declared_once_with_a_purpose():
    assert set(marks.METHODS) == {"dbi", "natural", "random", "aid", "pairs", "metafinger", "ipguard", "coupled",
                                  "zhang", "adi", "frontier", "innformant", "sac", "license", "dawn"}
    for name, spec in marks.METHODS.items():
        assert spec.name == name and spec.purpose in marks.PURPOSES and len(spec.verdicts) == 2
        assert spec.embeds == (spec.create_access == "training")
    assert [s.name for s in marks.METHODS.values() if s.keyed] == ["pairs"]


def test_verify_checks_the_declared_access_before_asking(lenet, mnist):
    oracle = LabelsOracle(TorchOracle(lenet, mnist.shape))
    key = keys.KeyFile(method="pairs", config={"user_id": "u"}, queries=mnist.test.x[:4],
                       expected=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(AccessError, match="verifying a pairs key needs probabilities"):
        marks.verify(oracle, key, secret=b"s" * 16)
    assert oracle.queries == 0


def test_an_unknown_method_is_a_key_file_error(lenet, mnist):
    key = baselines.natural(TorchOracle(lenet, mnist.shape), mnist.test.x[:3])
    key.method = "nonesuch"
    with pytest.raises(KeyFileError, match="not known"):
        marks.verify(TorchOracle(lenet, mnist.shape), key)
