"""Sensitive sample pairs (Gao et al.): the per-user binary head and verify, on hand-made keys and a model that answers
chosen logits (fast: no training, mutation-tested). What the module docstring promises: the head's seed is the first
8 bytes (little-endian) of HMAC-SHA256(secret, tag | len(u) | u | N), W ~ N(0, 1) (2, N) float64 from it with each
row minus its mean; binary label = 1 iff the margin h_1 - h_0 of h = W @ log(max(p, 2**-149)) is > 0; TAMPERED when
any member of any pair has a binary label other than the key's."""

import hashlib
import hmac
import math

import pytest
import torch
from test_kill_ownership import SHAPE, inputs

from nnmark.errors import ArgumentError, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.integrity import pairing
from nnmark.oracles import LabelsOracle, ProbabilitiesOracle, TorchOracle

SECRET, USER, K = b"s3cret", "alice", 10
SCALES = torch.tensor([0.3, 1.0, 0.5, 2.0])
"""Pair i's members have logits -s_i d and +s_i d (d = W_1 - W_0): binary labels 0 and 1."""


class Table(torch.nn.Module):
    """Answers the input whose pixels are i / 1024 with the logits ``rows[i]`` (a model answering chosen outputs)."""

    def __init__(self, rows):
        super().__init__()
        self.rows = torch.as_tensor(rows, dtype=torch.float32)

    def forward(self, x):
        return self.rows[(x[:, 0, 0, 0].double() * 1024).round().long()]


def table_oracle(rows, shape=SHAPE):
    """A probabilities oracle (no gradients) answering softmax(rows[i]) on ``inputs(0, n)[i]``."""
    return ProbabilitiesOracle(TorchOracle(Table(rows), shape))


def spec_head(secret=SECRET, user=USER, n=K):
    """The head as the module docstring defines it, computed here from the definition."""
    u = user.encode("utf-8")
    msg = b"nnmark.pairing.head/v1" + len(u).to_bytes(8, "little") + u + n.to_bytes(8, "little")
    seed = int.from_bytes(hmac.new(secret, msg, hashlib.sha256).digest()[:8], "little")
    w = torch.randn((2, n), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return w - w.mean(dim=1, keepdim=True)


D = (spec_head()[1] - spec_head()[0]).float()
LOGITS = torch.stack([s * sign * D for s in SCALES for sign in (-1, 1)])
EXPECTED = torch.tensor([0, 1] * len(SCALES))


def spec_margins(logits):
    p = torch.softmax(logits, dim=1).float().double().clamp_min(2.0**-149).log()
    return p @ (spec_head()[1] - spec_head()[0])


def _key(expected=EXPECTED, n=None, **config):
    n = len(expected) if n is None else n
    return KeyFile(pairing.METHOD, {"user_id": USER, "num_classes": K, **config}, inputs(0, n), expected)


def _flipped(*rows):
    logits = LOGITS.clone()
    logits[list(rows)] *= -1
    return logits


# --- stage 0: the head ----------------------------------------------------------------------------------------------


def test_the_head_is_derived_from_the_secret_the_user_and_the_classes_as_documented():
    head = pairing.derive_head(SECRET, USER, K)
    assert head.dtype == torch.float64 and head.shape == (2, K) and torch.equal(head, spec_head())
    assert head.sum(dim=1).abs().max() < 1e-12
    assert torch.equal(pairing.derive_head(bytearray(SECRET), USER, K), head)
    for other in [(b"other", USER, K), (SECRET, "bob", K)]:
        assert not torch.equal(pairing.derive_head(*other), head)
    assert torch.equal(pairing.derive_head(SECRET, USER, 2), spec_head(n=2))
    u = "zoë"  # the UTF-8 length, not the character count, is hashed
    assert pairing.head_seed(SECRET, u, K) == int.from_bytes(hmac.new(
        SECRET, b"nnmark.pairing.head/v1" + (4).to_bytes(8, "little") + u.encode() + K.to_bytes(8, "little"),
        hashlib.sha256).digest()[:8], "little")


@pytest.mark.parametrize("secret, user, n, match", [
    (b"", USER, K, r"^secret must be non-empty bytes$"),
    ("s3cret", USER, K, r"^secret must be non-empty bytes$"),
    (SECRET, "", K, r"^user_id must be a non-empty string$"),
    (SECRET, b"alice", K, r"^user_id must be a non-empty string$"),
    (SECRET, USER, 1, r"^num_classes must be an int >= 2$"),
    (SECRET, USER, 10.0, r"^num_classes must be an int >= 2$"),
])
def test_a_head_needs_a_secret_a_user_and_two_classes(secret, user, n, match):
    with pytest.raises(ArgumentError, match=match):
        pairing.derive_head(secret, user, n)


# --- the decision path ----------------------------------------------------------------------------------------------


def test_the_binary_label_is_one_only_for_a_positive_margin():
    head = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    p = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    labels, margins = pairing.binary_decision(p, head)
    assert labels.tolist() == [0, 1, 0] and labels.dtype == torch.int64 and margins.dtype == torch.float64
    assert margins.tolist() == pytest.approx([-math.log(2), math.log(2), 0.0], abs=1e-15)
    assert margins[2] == 0.0  # exactly on the boundary: label 0


def test_a_probability_that_underflowed_to_zero_counts_as_the_smallest_float32():
    head = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    labels, margins = pairing.binary_decision(torch.tensor([[0.0, 0.5, 0.5]]), head)
    assert labels.tolist() == [0] and margins.item() == pytest.approx(-149 * math.log(2), rel=1e-12)
    assert pairing.log_probabilities(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([-149 * math.log(2), 0.0])


def test_the_binary_labels_are_asked_of_the_oracle_as_probabilities():
    oracle = table_oracle(LOGITS)
    labels, margins = pairing.binary_labels(oracle, spec_head(), inputs(0, len(LOGITS)))
    assert labels.tolist() == EXPECTED.tolist() and oracle.queries == len(LOGITS)
    assert margins.tolist() == pytest.approx(spec_margins(LOGITS).tolist(), rel=1e-9)


# --- verify ---------------------------------------------------------------------------------------------------------


def test_a_model_that_keeps_every_binary_label_is_intact():
    oracle = table_oracle(LOGITS)
    oracle.probabilities(inputs(0, 2))  # queries asked before are not this verdict's
    v = pairing.verify(oracle, _key(), secret=SECRET)
    assert v.passed is True and v.decision == "intact" and v.method == pairing.METHOD
    assert v.statistic_name == "pair_detection_rate" and v.statistic == 0.0 and v.flipped == [] and v.queries == 8
    margin = spec_margins(LOGITS).abs().min().item()
    assert v.details == {"n": 8, "n_pairs": 4, "sample_change_rate": 0.0, "flipped_pairs": [], "flipped_samples": [],
                         "min_abs_margin": pytest.approx(margin, rel=1e-9)}


@pytest.mark.parametrize("rows, pairs", [([0], [0]), ([3], [1]), ([7], [3]), ([4, 5], [2]), ([1, 6], [0, 3])])
def test_any_changed_member_makes_its_pair_and_the_model_tampered(rows, pairs):
    v = pairing.verify(table_oracle(_flipped(*rows)), _key(), secret=SECRET)
    assert v.passed is False and v.decision == "tampered" and v.flipped == rows
    assert v.statistic == len(pairs) / 4 and v.details["flipped_pairs"] == pairs
    assert v.details["flipped_samples"] == rows and v.details["sample_change_rate"] == len(rows) / 8


def test_another_secret_gives_another_head_under_which_the_members_of_every_pair_agree():
    """Pairs a step apart around the owner's boundary (bases orthogonal to d, members -/+ 0.01 d): under another
    head both members of a pair fall on one side, so every pair flips."""
    base = 3 * torch.randn(4, K, generator=torch.Generator().manual_seed(0))
    base -= (base @ D)[:, None] * D / (D @ D) + base.mean(dim=1, keepdim=True)
    logits = torch.stack([b + sign * 0.01 * D for b in base for sign in (-1, 1)])
    assert pairing.verify(table_oracle(logits), _key(), secret=SECRET).passed
    v = pairing.verify(table_oracle(logits), _key(), secret=b"guess")
    assert not v.passed and v.statistic == 1.0


def test_a_key_without_the_classes_it_was_made_for_is_verified_on_the_oracles():
    key = KeyFile(pairing.METHOD, {"user_id": USER}, inputs(0, 8), EXPECTED)
    assert pairing.verify(table_oracle(LOGITS), key, secret=SECRET).passed


NO_USER = r"^pairs key has no user_id in its config$"
NOT_BINARY = r"^pairs key must hold an even number of queries with binary \(0/1\) expected labels$"


@pytest.mark.parametrize("key, match", [
    (lambda: KeyFile("dbi", {"user_id": USER, "num_classes": K}, inputs(0, 8), EXPECTED), "not a pairs key"),
    (lambda: _key(user_id=""), NO_USER),
    (lambda: _key(user_id=7), NO_USER),
    (lambda: KeyFile(pairing.METHOD, {"num_classes": K}, inputs(0, 8), EXPECTED), NO_USER),
    (lambda: _key(EXPECTED[:7]), NOT_BINARY),
    (lambda: _key(torch.tensor([0, 2] * 4)), NOT_BINARY),
    (lambda: _key(num_classes=3), "made for a model with 3 classes; this one has 10"),
])
def test_verify_refuses_keys_that_are_not_well_formed_pairs_keys(key, match):
    with pytest.raises(KeyFileError, match=match):
        pairing.verify(table_oracle(LOGITS), key(), secret=SECRET)


def test_verify_needs_probabilities():
    with pytest.raises(Exception, match="probabilities"):
        pairing.verify(LabelsOracle(TorchOracle(Table(LOGITS), SHAPE)), _key(), secret=SECRET)
