"""Sequential decisions: the e-value's closed form, its error bound under early stopping, and the stop rules."""

import math

import pytest
import torch

from nnmark.audit import sequential as seq
from nnmark.errors import ArgumentError


@pytest.mark.parametrize("k,t,p0", [(0, 5, 0.1), (7, 10, 0.1), (3, 30, 0.5), (20, 20, 0.02)])
def test_mixture_e_value_matches_its_integral(k, t, p0):
    qs = torch.linspace(p0, 1, 200_001, dtype=torch.float64)
    lr = qs**k * (1 - qs) ** (t - k) / (p0**k * (1 - p0) ** (t - k))
    direct = torch.trapezoid(lr, qs).item() / (1 - p0)
    assert math.exp(seq.log_mixture_e_value(k, t, p0)) == pytest.approx(direct, rel=1e-4)


def _run(rate, p0, threshold, n, alpha, generator):
    """Ask n Bernoulli(rate) indicators in batches of 8; return (the deciding step, asked)."""
    x = torch.rand(n, generator=generator) < rate
    for end in range(8, n + 8, 8):
        end = min(end, n)
        step = seq.ownership_decision(int(x[:end].sum()), end, n, p0=p0, threshold=threshold, max_p_value=1e-3,
                                      alpha=alpha)
        if step.decided:
            return step, end
    raise AssertionError("the whole key always decides")


def test_false_match_rate_under_early_stopping_stays_below_alpha():
    gen = torch.Generator().manual_seed(0)
    alpha, runs = 0.05, 2000
    # a null model at the boundary p0, with a threshold it reaches often by luck on small prefixes
    claims = sum(_run(0.3, 0.3, 0.3, 100, alpha, gen)[0].passed for _ in range(runs))
    # the whole-key binomial rule adds its own (<= 1e-3) share; the e-value part is bounded by alpha
    assert claims / runs <= alpha


def test_a_derived_model_matches_early_and_an_independent_one_fails_early():
    gen = torch.Generator().manual_seed(1)
    step, asked = _run(0.95, 0.1, 0.5, 100, 1e-3, gen)
    assert step.passed and asked <= 16
    step, asked = _run(0.05, 0.1, 0.5, 100, 1e-3, gen)
    assert not step.passed and asked < 100


def test_curtailment_decides_exactly_as_the_whole_key():
    # 60 of 100 asked, all hits: even 40 misses leave 0.6 >= 0.5 and a tiny p-value -> the full key matches
    step = seq.ownership_decision(60, 60, 100, p0=0.3, threshold=0.5, max_p_value=1e-3, alpha=1e-12)
    assert step.decided and step.passed and step.rule == "curtailed"
    # 51 misses of 100: the threshold 0.5 cannot be reached any more
    step = seq.ownership_decision(9, 60, 100, p0=0.45, threshold=0.5, max_p_value=None, alpha=1e-12)
    assert step.decided and not step.passed and step.rule == "curtailed"
    assert not seq.ownership_decision(30, 60, 100, p0=0.45, threshold=0.5, max_p_value=None, alpha=1e-3).decided


def test_integrity_stops_at_the_first_flip_and_needs_the_whole_key_for_intact():
    assert seq.integrity_decision(1, 8, 100) == seq.Step(True, False, "first flip")
    assert not seq.integrity_decision(0, 96, 100).decided
    assert seq.integrity_decision(0, 100, 100) == seq.Step(True, True, "whole key")


def test_telltale_stops_with_one_or_no_environment_left():
    assert not seq.telltale_decision(["float32", "float64"], 8, 20).decided
    assert seq.telltale_decision(["float64"], 8, 20).rule == "one environment left"
    assert seq.telltale_decision([], 8, 20).decided
    assert seq.telltale_decision(["a", "b"], 20, 20).rule == "whole key"


def test_query_order_is_seeded_and_keeps_groups_together():
    order = seq.query_order(10, seed=3, group=2)
    assert torch.equal(order, seq.query_order(10, seed=3, group=2))
    assert sorted(order.tolist()) == list(range(10))
    assert all(order[i] % 2 == 0 and order[i + 1] == order[i] + 1 for i in range(0, 10, 2))
    prefixes = seq.batches(order, 3, group=2)
    assert [len(p) for p in prefixes] == [4, 8, 10]
    with pytest.raises(ArgumentError):
        seq.query_order(9, seed=0, group=2)


def _alpha_at(log_e):
    """An alpha whose bound log(1/alpha) equals ``log_e`` exactly: the e-value then just reaches 1/alpha."""
    alpha = math.exp(-log_e)
    for _ in range(64):
        bound = math.log(1 / alpha)
        if bound == log_e:
            return alpha
        alpha = math.nextafter(alpha, 0 if bound < log_e else 1)
    raise AssertionError(f"no alpha with log(1/alpha) == {log_e}")


@pytest.mark.parametrize("n", [1, 7, 100])
def test_intact_only_after_the_whole_key_the_last_query_included(n):
    assert seq.integrity_decision(0, n - 1, n) == seq.Step(False)
    assert seq.integrity_decision(0, n, n) == seq.Step(True, True, "whole key")
    assert seq.integrity_decision(1, n, n) == seq.Step(True, False, "first flip")


def test_the_whole_key_decides_by_the_methods_own_rule():
    # 50 of 100 at p0 = 0.3: the rate reaches 0.5 and P[Bin(100, 0.3) >= 50] ~ 1e-5 < 1e-3
    rule = dict(p0=0.3, threshold=0.5, max_p_value=1e-3)
    assert seq.ownership_decision(50, 100, 100, **rule) == seq.Step(True, True, "whole key")
    assert seq.ownership_decision(49, 100, 100, **rule) == seq.Step(True, False, "whole key")
    # a p-value exactly at the bound is no match: the rule is P < max_p_value
    at_bound = dict(rule, max_p_value=seq.binomial_tail(50, 100, 0.3))
    assert seq.ownership_decision(50, 100, 100, **at_bound) == seq.Step(True, False, "whole key")


def test_curtailed_no_match_when_even_all_remaining_hits_miss_the_p_value():
    # 5 of 10 asked, 10 left: at best 15 of 20, rate 0.75 >= 0.5 but P[Bin(20, 0.5) >= 15] ~ 0.02 >= 1e-3
    step = seq.ownership_decision(5, 10, 20, p0=0.5, threshold=0.5, max_p_value=1e-3)
    assert step == seq.Step(True, False, "curtailed")


def test_match_claimed_once_the_e_value_against_the_larger_of_p0_and_threshold_reaches_one_over_alpha():
    # a p-value rule with p0 = 0.1 below its threshold 0.5 tests against 0.5: 16 of 16 give e ~ 3.8e3
    log_e = seq.log_mixture_e_value(16, 16, 0.5)
    rule = dict(p0=0.1, threshold=0.5, max_p_value=1e-3)
    assert seq.ownership_decision(16, 16, 100, **rule, alpha=1e-3) == seq.Step(True, True, "e-value", math.exp(log_e))
    assert seq.ownership_decision(16, 16, 100, **rule, alpha=_alpha_at(log_e)).passed
    assert seq.ownership_decision(16, 16, 100, **rule, alpha=1.5 * math.exp(-log_e)).passed  # e = 1.5 / alpha
    assert not seq.ownership_decision(16, 16, 100, **rule, alpha=0.5 * math.exp(-log_e)).decided  # e = 0.5 / alpha
    # against p0 alone 8 of 8 would already give e ~ 4.5e6 >= 1/alpha: not enough, the threshold is not shown yet
    assert seq.log_mixture_e_value(8, 8, 0.1) > math.log(1e3)
    assert not seq.ownership_decision(8, 8, 100, **rule, alpha=1e-3).decided
    # the null is the larger of the two; a rate-only rule tests against its threshold
    assert seq.match_null(0.1, 0.5, 1e-3) == 0.5 and seq.match_null(0.6, 0.5, 1e-3) == 0.6
    assert seq.match_null(0.1, 0.5, None) == 0.5 and seq.match_null(0.6, 0.5, None) == 0.5
    # a null above the threshold: 12 of 12 reach 1/alpha against 0.5 (e ~ 630) but not against 0.6 (e ~ 88)
    high = dict(p0=0.6, threshold=0.5, max_p_value=1e-3, alpha=1 / 200)
    assert seq.log_mixture_e_value(12, 12, 0.5) > math.log(200) > seq.log_mixture_e_value(12, 12, 0.6)
    assert not seq.ownership_decision(12, 12, 100, **high).decided


def test_false_match_rate_stays_below_alpha_for_a_model_between_the_null_and_the_threshold():
    gen = torch.Generator().manual_seed(3)
    alpha, runs = 0.05, 2000
    # a distilled independent model: far above the calibrated null 0.1, below the threshold 0.5, so the whole key
    # rarely claims it (P[Bin(100, 0.42) >= 50] ~ 0.07); early stopping must not claim it more often than alpha
    steps = [_run(0.42, 0.1, 0.5, 100, alpha, gen)[0] for _ in range(runs)]
    early = sum(s.passed and s.rule == "e-value" for s in steps)
    assert early / runs <= alpha  # an e-value against p0 alone claimed 95 % of them


def test_no_match_claimed_once_the_e_value_of_the_misses_reaches_one_over_alpha():
    rule = dict(p0=0.1, threshold=0.5, max_p_value=1e-3)
    for hits in (0, 1):
        log_e = seq.log_mixture_e_value(24 - hits, 24, 0.5)
        step = seq.ownership_decision(hits, 24, 1000, **rule, alpha=1e-3)
        assert step == seq.Step(True, False, "e-value", math.exp(log_e))
        assert seq.ownership_decision(hits, 24, 1000, **rule, alpha=_alpha_at(log_e)).decided
        assert seq.ownership_decision(hits, 24, 1000, **rule, alpha=1.5 * math.exp(-log_e)).decided
        assert not seq.ownership_decision(hits, 24, 1000, **rule, alpha=0.5 * math.exp(-log_e)).decided
    # a rate below the threshold on weak evidence decides nothing yet
    assert seq.ownership_decision(3, 8, 1000, **rule, alpha=1e-3) == seq.Step(False)


@pytest.mark.parametrize("p0,threshold,max_p_value,hits", [
    (0.1, 0.0, 1e-3, 0),  # a rule that the p-value alone decides: no e-value on the misses
    (0.5, 1.0, None, 8),  # a rate rule of 1: its null (the threshold) leaves no e-value for a match
    (0.0, 0.0, 1e-3, 0),  # a null and a threshold of 0: no e-value against them
])
def test_degenerate_nulls_and_thresholds_wait_for_more_queries(p0, threshold, max_p_value, hits):
    assert seq.ownership_decision(hits, 8, 100, p0=p0, threshold=threshold, max_p_value=max_p_value) == seq.Step(False)


def test_false_no_match_rate_under_early_stopping_stays_below_alpha():
    gen = torch.Generator().manual_seed(2)
    alpha, runs = 0.05, 2000
    # a model at the threshold rate: the whole key fails it half the time, but an e-value NO MATCH is a false claim
    steps = [_run(0.5, 0.1, 0.5, 100, alpha, gen)[0] for _ in range(runs)]
    claims = sum(not s.passed and s.rule == "e-value" for s in steps)
    assert claims / runs <= alpha  # a doubled rate (0.1) would give ~200 of 2000 claims


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5])
def test_alpha_outside_the_open_unit_interval_is_refused(alpha):
    with pytest.raises(ArgumentError, match="alpha"):
        seq.ownership_decision(1, 2, 10, p0=0.1, threshold=0.5, max_p_value=None, alpha=alpha)


@pytest.mark.parametrize("k,t,p0", [(1, 2, 0.0), (1, 2, 1.0), (1, 2, 1.5), (3, 2, 0.5), (-1, 2, 0.5)])
def test_e_value_refuses_impossible_counts_and_nulls(k, t, p0):
    with pytest.raises(ArgumentError, match="p0"):
        seq.log_mixture_e_value(k, t, p0)


def test_e_value_of_no_success_in_many_trials_is_zero_and_its_p_value_one():
    assert seq.log_mixture_e_value(0, 10_000, 0.5) == -math.inf
    assert seq.anytime_p_value(0, 10_000, 0.5) == 1.0
    for k, t, p0 in [(3, 5, 0.3), (8, 8, 0.1)]:  # e-values of ~1.7 and ~1.2e7
        assert seq.anytime_p_value(k, t, p0) == pytest.approx(math.exp(-seq.log_mixture_e_value(k, t, p0)))
    assert seq.anytime_p_value(2, 4, 0.3) == 1.0  # an e-value below 1 is no evidence


def test_telltale_steps_name_their_rule():
    assert seq.telltale_decision(["float32", "float64"], 19, 20) == seq.Step(False)
    assert seq.telltale_decision(["float64"], 8, 20) == seq.Step(True, None, "one environment left")
    assert seq.telltale_decision([], 8, 20) == seq.Step(True, None, "no environment left")
    assert seq.telltale_decision(["a", "b"], 20, 20) == seq.Step(True, None, "whole key")


def test_orders_and_batches_of_single_queries():
    order = seq.query_order(5, seed=0)
    assert sorted(order.tolist()) == list(range(5))
    assert seq.query_order(1, seed=0).tolist() == [0]
    assert [len(p) for p in seq.batches(order, 2)] == [2, 4, 5]
    assert [len(p) for p in seq.batches(order, 1)] == [1, 2, 3, 4, 5]
    for n, group in [(0, 1), (0, 0), (4, 0)]:
        with pytest.raises(ArgumentError, match="cannot order"):
            seq.query_order(n, seed=0, group=group)
    with pytest.raises(ArgumentError, match="batch size"):
        seq.batches(order, 0)
