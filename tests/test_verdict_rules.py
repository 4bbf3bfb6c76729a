"""The ownership and watermark verdict rules (marks/ownership/stats.py), the fitted null of calibrated keys, and the
Verdict they give (marks/verdict.py).

Each rule is the one its docstring states: a match iff the rate reaches the threshold and, when a bound is given,
the one-sided binomial p-value lies strictly below it; the tests sit on the boundaries, where a changed comparison
turns a NO MATCH into a MATCH.
"""

import math

import pytest
import torch
from scipy import stats

from nnmark.errors import ArgumentError, NnmarkError
from nnmark.marks.ownership.stats import binomial_tail, match_verdict, normal_fit, predictive_tail, watermark_verdict
from nnmark.marks.verdict import Verdict


def _mask(hits: int, n: int) -> torch.Tensor:
    """n answers, the first ``hits`` as the key expects."""
    return torch.arange(n) < hits


def _tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize("k,n,p", [(1, 1, 0.5), (3, 10, 0.1), (10, 10, 0.9), (7, 20, 0.0), (0, 5, 1.0), (5, 5, 1.0)])
def test_binomial_tail_is_the_upper_tail(k, n, p):
    assert binomial_tail(k, n, p) == pytest.approx(_tail(k, n, p), rel=1e-12, abs=1e-300)


def test_binomial_tail_of_no_agreement_is_one():
    assert binomial_tail(0, 10, 0.3) == 1.0 and binomial_tail(-3, 10, 0.3) == 1.0 and binomial_tail(0, 0, 0.5) == 1.0


@pytest.mark.parametrize("k,n,p,match", [
    (True, 10, 0.5, "integers"), (1, False, 0.5, "integers"), (1.0, 10, 0.5, "integers"), (1, 10.0, 0.5, "integers"),
    (11, 10, 0.5, "k <= n"), (0, -1, 0.5, "0 <= n"), (1, 10, -0.01, r"\[0, 1\]"), (1, 10, 1.01, r"\[0, 1\]"),
])
def test_binomial_tail_refuses_what_is_no_binomial(k, n, p, match):
    with pytest.raises(ArgumentError, match=match):
        binomial_tail(k, n, p)


VALUES = [0.2, 0.3, 0.35, 0.5]
"""Calibration values: mean 0.3375, sample sd 0.125 (K - 1 = 3 in the denominator)."""


def test_normal_fit_is_the_mean_and_the_sample_standard_deviation():
    assert normal_fit(VALUES) == (pytest.approx(0.3375, rel=1e-15), pytest.approx(0.125, rel=1e-14))
    assert normal_fit([1.0, 2.0]) == (1.5, pytest.approx(math.sqrt(0.5), rel=1e-15))
    with pytest.raises(ArgumentError, match="at least 2 independent models, got 1"):
        normal_fit([0.3])
    with pytest.raises(NnmarkError, match="^the calibration models' values have no spread, so no false-claim bound can "
                       "be fitted; use other calibration models$"):
        normal_fit([0.3, 0.3, 0.3])


@pytest.mark.parametrize("x", [0.0, 0.3, 0.3375, 0.6, 0.9])
def test_the_predictive_tail_is_the_student_t_of_a_new_draw(x):
    scale = 0.125 * math.sqrt(1 + 1 / 4)
    assert predictive_tail(x, 0.3375, 0.125, 4) == pytest.approx(stats.t.cdf((x - 0.3375) / scale, 3), rel=1e-12)


def test_match_verdict_reports_what_it_decided_on():
    hits = torch.tensor([True, False, True, True, False])
    v = match_verdict("ipguard", hits, 7, statistic_name="match_rate", p0=0.2, threshold=0.5, k=3.0)
    assert v == Verdict("ipguard", "match", True, "match_rate", 0.6, [1, 4], 7,
                        {"n": 5, "hits": 3, "p0": 0.2, "p_value": binomial_tail(3, 5, 0.2), "threshold": 0.5, "k": 3.0})
    v = match_verdict("metafinger", hits, 5, statistic_name="accuracy", p0=0.2, threshold=0.5, max_p_value=0.1)
    assert v.details["max_p_value"] == 0.1 and v.details["threshold"] == 0.5


@pytest.mark.parametrize("hits,threshold,passed", [(50, 0.5, True), (49, 0.5, False), (100, 1.0, True), (0, 0.0, True)])
def test_match_iff_the_rate_reaches_the_threshold(hits, threshold, passed):
    v = match_verdict("m", _mask(hits, 100), 100, statistic_name="r", p0=0.1, threshold=threshold)
    assert (v.passed, v.decision) == (passed, "match" if passed else "no match")


def test_match_needs_a_p_value_strictly_below_its_bound():
    p = binomial_tail(30, 100, 0.2)  # ~0.01
    rule = dict(statistic_name="r", p0=0.2, threshold=0.3)
    assert match_verdict("m", _mask(30, 100), 100, **rule, max_p_value=math.nextafter(p, 1)).passed
    v = match_verdict("m", _mask(30, 100), 100, **rule, max_p_value=p)
    assert not v.passed and v.decision == "no match"
    assert not match_verdict("m", _mask(29, 100), 100, **rule, max_p_value=1.0).passed  # the rate still decides


def test_watermark_verdict_reports_what_it_decided_on():
    hits = torch.tensor([True, True, False, True])
    v = watermark_verdict("zhang", hits, 4, null=0.1, min_success=0.5, alpha=0.05, trigger="content")
    assert v == Verdict("zhang", "watermarked", True, "success_rate", 0.75, [2], 4,
                        {"n": 4, "successes": 3, "trigger": "content", "null": 0.1,
                         "p_value": binomial_tail(3, 4, 0.1), "min_success": 0.5, "alpha": 0.05})


def test_watermarked_iff_the_success_reaches_its_minimum_and_the_p_value_lies_below_alpha():
    p = binomial_tail(20, 40, 0.1)
    rule = dict(null=0.1, min_success=0.5)
    assert watermark_verdict("w", _mask(20, 40), 40, **rule, alpha=math.nextafter(p, 1)).passed
    v = watermark_verdict("w", _mask(20, 40), 40, **rule, alpha=p)
    assert not v.passed and v.decision == "not watermarked"
    assert not watermark_verdict("w", _mask(19, 40), 40, **rule, alpha=1.0).passed


def test_verdict_to_dict_holds_every_field():
    v = Verdict("dbi", "tampered", False, "change_rate", 0.25, [3], 4, {"n": 4})
    assert v.to_dict() == {"method": "dbi", "decision": "tampered", "passed": False, "statistic_name": "change_rate",
                           "statistic": 0.25, "flipped": [3], "queries": 4, "details": {"n": 4}}
    assert Verdict("dbi", "intact", True, "change_rate", 0.0).to_dict()["flipped"] == []
