"""MetaFinger's decision (Yang et al.): verify, the screen, the majority labels, the leave-one-out null and the
decidability check, on hand-made keys, predictions and a model that answers chosen labels (fast: no training,
mutation-tested). The rule: "match" iff query accuracy >= threshold AND P[Bin(n, p0) >= hits] < max_p_value."""

import pytest
import torch
from test_kill_ownership import hitting, inputs

from nnmark.errors import ArgumentError, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import metafinger
from nnmark.marks.ownership.stats import binomial_tail

N = 20
EXPECTED = torch.arange(N) % 10
CONFIG = {"p0": 0.1, "threshold": 0.5, "max_p_value": 1e-3}


def _key(method=metafinger.METHOD, **config):
    return KeyFile(method, {**CONFIG, **config}, inputs(0, N), EXPECTED)


def _suspect(hits):
    return hitting(EXPECTED, hits)


# --- verify ---------------------------------------------------------------------------------------------------------


def test_accuracy_at_the_threshold_with_a_small_p_value_matches():
    oracle = _suspect(10)
    oracle.labels(inputs(0, 3))  # queries asked before are not this verdict's
    v = metafinger.verify(oracle, _key())
    assert v.passed is True and v.decision == "match" and v.method == metafinger.METHOD and v.queries == N
    assert v.statistic_name == "query_accuracy" and v.statistic == 0.5 and v.flipped == list(range(10, N))
    assert v.details == {"n": N, "hits": 10, "p0": 0.1, "p_value": binomial_tail(10, N, 0.1), "threshold": 0.5,
                         "max_p_value": 1e-3}
    assert not metafinger.verify(_suspect(9), _key()).passed  # below the threshold, p ~ 1e-5


def test_the_calibrated_null_decides_beside_the_threshold():
    """Under p0 = 0.5 (a null calibrated on independent models) 15 of 20 is no evidence: P ~ 0.02 >= 1e-3."""
    v = metafinger.verify(_suspect(15), _key(p0=0.5))
    assert not v.passed and v.decision == "no match" and v.details["p_value"] == pytest.approx(binomial_tail(15, N, .5))
    assert metafinger.verify(_suspect(19), _key(p0=0.5)).passed  # P ~ 2e-5
    exact = binomial_tail(19, N, 0.5)
    assert not metafinger.verify(_suspect(19), _key(p0=0.5, max_p_value=exact)).passed  # p == bound: no match
    assert metafinger.verify(_suspect(N), _key(p0=0.0, threshold=1.0, max_p_value=1.0)).passed


@pytest.mark.parametrize("key, match", [
    (lambda: _key("ipguard"), "not a metafinger key"),
    *[(lambda f=f: KeyFile(metafinger.METHOD, {k: v for k, v in CONFIG.items() if k != f}, inputs(0, N), EXPECTED),
       "lacks a numeric") for f in CONFIG],
    (lambda: _key(p0=None), "lacks a numeric"),
    (lambda: _key(threshold="half"), "lacks a numeric"),
    (lambda: _key(p0=1.01), "outside"),
    (lambda: _key(p0=-0.01), "outside"),
    (lambda: _key(threshold=1.01), "outside"),
    (lambda: _key(threshold=-0.01), "outside"),
    (lambda: _key(max_p_value=0.0), "outside"),
    (lambda: _key(max_p_value=1.01), "outside"),
])
def test_verify_refuses_keys_without_a_decision_rule_in_range(key, match):
    with pytest.raises(KeyFileError, match=match):
        metafinger.verify(_suspect(N), key())


def test_the_bounds_of_the_rule_are_accepted():
    assert metafinger.verify(_suspect(N), _key(p0=1.0, threshold=0.0, max_p_value=1.0)).decision == "no match"
    assert metafinger.verify(_suspect(N), _key(p0="0.1")).passed


# --- what create decides with ---------------------------------------------------------------------------------------


def test_the_screen_keeps_a_sample_only_where_every_positive_and_no_negative_model_gives_its_label():
    y = torch.tensor([1, 1, 1, 1])
    pos = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1]])
    neg = torch.tensor([[0, 0, 0, 1], [2, 2, 2, 2]])
    assert metafinger.screen_mask(y, pos, neg).tolist() == [True, False, False, False]


def test_the_majority_label_is_the_most_predicted_and_a_tie_goes_to_the_smallest():
    preds = torch.tensor([[3, 2, 0, 4], [3, 1, 1, 4], [1, 2, 1, 2], [1, 5, 0, 2]])
    assert metafinger.majority_labels(preds).tolist() == [1, 2, 0, 2]
    assert metafinger.majority_labels(torch.tensor([[0], [2], [2]])).tolist() == [2]


def test_the_null_is_each_negative_models_accuracy_on_what_the_screen_without_it_keeps():
    y = torch.tensor([0, 1, 2, 3])
    pos = y[None].clone()
    neg = torch.tensor([[0, 1, 9, 9],   # without it, #1 and #2 claim samples 1 and 2: right on 0 of {0, 3}
                        [9, 1, 9, 9],   # without it, #0 and #2 claim 0, 1 and 2: wrong on {3}
                        [9, 9, 2, 9]])  # without it, #0 and #1 claim 0 and 1: right on 2 of {2, 3}
    assert metafinger.null_accuracies(y, pos, neg) == [0.5, 0.0, 0.5]
    assert metafinger.null_accuracies(y, torch.tensor([[9, 9, 9, 9]]), neg) == [0.0, 0.0, 0.0]  # nothing kept
    assert metafinger.null_accuracies(y, pos, torch.tensor([[0, 9, 9, 9]])) == [0.25]


def test_a_key_must_be_able_to_decide_even_for_the_source():
    """p0^n is the smallest p-value n queries can give; at or above max_p_value no model could match."""
    n = metafinger.MIN_KEPT
    metafinger.check_decidable(n, 0.5, 0.5**n * 1.01, "fix it")
    with pytest.raises(ArgumentError, match=r"with p0 = 0.5 the smallest p-value of 10 queries is p0\^10 = 0.000977, "
                       r"not below max_p_value = 0.000976562, so no model could match: fix it"):
        metafinger.check_decidable(n, 0.5, 0.5**n, "fix it")
    with pytest.raises(ArgumentError, match=f"would hold {n - 1} queries, fewer than {n}: fix it"):
        metafinger.check_decidable(n - 1, 0.0, 1.0, "fix it")
