"""MetaFinger's decision (Yang et al.): verify, the screen, the majority labels, the leave-one-out null and the
decidability check, on hand-made keys, predictions and a model that answers chosen labels (fast: no training,
mutation-tested). The rule: "match" iff query accuracy >= threshold AND P[Bin(n, p0) >= hits] < max_p_value; a
calibrated key's threshold is the larger of the accuracy a new draw of the null fitted to K independent models'
accuracies a_k passes with probability alpha, mean(a) + t_{K-1}(1 - alpha) s sqrt(1 + 1/K), and one query above the
best a_k."""

import math

import pytest
import torch
from scipy import stats
from test_kill_ownership import hitting, inputs

from nnmark.errors import ArgumentError, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import metafinger
from nnmark.marks.ownership.stats import binomial_tail

N = 20
EXPECTED = torch.arange(N) % 10
CONFIG = {"p0": 0.1, "threshold": 0.5, "max_p_value": 1e-3}


ACCURACIES = [0.0, 0.05, 0.1, 0.15, 0.2]
"""The scratch models' query accuracies of a calibrated key: mean 0.1, s 0.079; tau ~ 0.425 at alpha 0.01."""


def spec_bound(accuracies, alpha):
    k, mean, sd = len(accuracies), float(torch.tensor(accuracies, dtype=torch.float64).mean()), float(
        torch.tensor(accuracies, dtype=torch.float64).std())
    return mean + stats.t.ppf(1 - alpha, k - 1) * sd * math.sqrt(1 + 1 / k)


def spec_threshold(accuracies, alpha, n=N):
    return max(spec_bound(accuracies, alpha), (round(max(accuracies) * n) + 1) / n)


def spec_p(rate, accuracies):
    k, mean, sd = len(accuracies), float(torch.tensor(accuracies, dtype=torch.float64).mean()), float(
        torch.tensor(accuracies, dtype=torch.float64).std())
    return stats.t.sf((rate - mean) / (sd * math.sqrt(1 + 1 / k)), k - 1)


def _calibrated(accuracies=ACCURACIES, alpha=0.01, **config):
    return _key(**{"calibration": {"accuracies": list(accuracies), "p_value": alpha, "queries": N},
                   "threshold": spec_threshold(accuracies, alpha), **config})


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


def test_a_calibrated_key_decides_at_the_threshold_its_null_gives():
    """tau ~ 0.4245: 9 of 20 (0.45) matches, 8 of 20 (0.40) does not, though the paper's 0.5 would refuse both."""
    assert spec_threshold(ACCURACIES, 0.01) == spec_bound(ACCURACIES, 0.01) == pytest.approx(0.4245, abs=1e-4)
    v = metafinger.verify(_suspect(9), _calibrated())
    assert v.passed and v.details["threshold"] == pytest.approx(spec_threshold(ACCURACIES, 0.01), rel=1e-12)
    assert v.details["p_value_calibrated"] == pytest.approx(spec_p(0.45, ACCURACIES), rel=1e-9)
    assert v.details["p_value_calibrated"] < 0.01
    assert v.details["calibration_models"] == 5 and v.details["calibrated_p_value"] == 0.01
    assert v.details["p_value"] == binomial_tail(9, N, 0.1)
    below = metafinger.verify(_suspect(8), _calibrated())
    assert not below.passed and below.details["p_value_calibrated"] == pytest.approx(spec_p(0.4, ACCURACIES), rel=1e-9)
    assert below.details["p_value_calibrated"] > 0.01
    assert not metafinger.verify(_suspect(9), _calibrated(p0=0.4)).passed  # the binomial bound still binds
    assert "p_value_calibrated" not in metafinger.verify(_suspect(9), _key()).details  # the paper's rule


def test_calibrate_gives_the_predictive_bound_and_the_null_it_rests_on():
    c = metafinger.calibrate(ACCURACIES, 0.05, N)
    assert c["threshold"] == c["bound"] == pytest.approx(spec_bound(ACCURACIES, 0.05), rel=1e-12)
    assert c["mean"] == pytest.approx(0.1, rel=1e-12) and c["std"] == pytest.approx(math.sqrt(0.00625), rel=1e-12)
    assert c["accuracies"] == ACCURACIES and c["p_value"] == 0.05 and c["queries"] == N
    # where a calibration model scores above the bound, the threshold is one query above it: no calibration model
    # matches (the outlier's 10 of 20 against a bound of about 0.38)
    outlier = [0.1] * 9 + [0.15] * 9 + [0.5]
    c = metafinger.calibrate(outlier, 0.01, N)
    assert c["bound"] == pytest.approx(spec_bound(outlier, 0.01), rel=1e-12) and c["bound"] < 0.4
    assert c["threshold"] == 11 / N == spec_threshold(outlier, 0.01)
    assert metafinger.verify(_suspect(11), _calibrated(outlier)).passed
    v = metafinger.verify(_suspect(10), _calibrated(outlier))
    assert not v.passed and v.details["p_value_calibrated"] == pytest.approx(spec_p(0.5, outlier), rel=1e-9)
    assert v.details["p_value_calibrated"] < 0.01  # the fitted null alone would claim it


def test_a_part_of_a_calibrated_key_keeps_the_whole_keys_threshold():
    """An audit asks prefixes of a key: the threshold is the one calibrated on the whole key's N queries."""
    whole = _calibrated([0.1] * 9 + [0.15] * 9 + [0.5])
    part = KeyFile(whole.method, whole.config, whole.queries[:10], whole.expected[:10])
    v = metafinger.verify(hitting(EXPECTED[:10], 6), part)
    assert v.details["threshold"] == 11 / N and v.details["n"] == 10 and v.passed  # 6 / 10 >= 0.55
    assert not metafinger.verify(hitting(EXPECTED[:10], 5), part).passed  # 5 / 10 < 0.55


def test_a_calibration_on_one_query_is_read():
    """The smallest key: one query, on which no calibration model was right; only a suspect right on it matches."""
    key = _key(calibration={"accuracies": [0.0, 0.01], "p_value": 0.01, "queries": 1}, threshold=1.0)
    assert metafinger.verify(_suspect(N), key).passed and not metafinger.verify(_suspect(N - 1), key).passed


def test_a_calibration_model_that_answers_every_query_leaves_no_threshold_to_pass():
    c = metafinger.calibrate([0.5, 0.8, 1.0], 0.6, N)
    assert c["bound"] < 1 and c["threshold"] == 21 / N


@pytest.mark.parametrize("key, match", [
    (lambda: _calibrated(threshold=0.5), "not the one its calibration gives"),
    (lambda: _calibrated([-0.05, 0.0, 0.1]), "below 0"),
    (lambda: _calibrated([0.9, 0.95, 1.05], 0.9), "outside"),  # its threshold lies above 1
    (lambda: _key(calibration={"p_value": 0.01, "queries": N}),
     r"^metafinger key's calibration needs >= 2 query accuracies with spread, a p_value in \(0, 1\) and the number "
     r"of queries they were measured on$"),
    (lambda: _key(calibration={"accuracies": [0.1], "p_value": 0.01, "queries": N}), "calibration needs"),
    (lambda: _key(calibration={"accuracies": [0.1, 0.1], "p_value": 0.01, "queries": N}), "calibration needs"),
    (lambda: _key(calibration={"accuracies": ACCURACIES, "p_value": 1.0, "queries": N}), "calibration needs"),
    (lambda: _key(calibration={"accuracies": ACCURACIES, "p_value": 0.0, "queries": N}), "calibration needs"),
    (lambda: _key(calibration={"accuracies": ACCURACIES, "queries": N}), "calibration needs"),
    (lambda: _key(calibration={"accuracies": ACCURACIES, "p_value": 0.01}), "calibration needs"),
    *[(lambda q=q: _key(calibration={"accuracies": ACCURACIES, "p_value": 0.01, "queries": q}), "calibration needs")
      for q in (0, -1, 2.0, True, "20")],
    (lambda: _key(calibration=[0.1, 0.2]), "calibration needs"),
])
def test_verify_refuses_a_calibration_that_does_not_hold(key, match):
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
