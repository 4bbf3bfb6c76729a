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
    """Ask n Bernoulli(rate) indicators in batches of 8; return (decision, asked)."""
    x = torch.rand(n, generator=generator) < rate
    for end in range(8, n + 8, 8):
        end = min(end, n)
        step = seq.ownership_decision(int(x[:end].sum()), end, n, p0=p0, threshold=threshold, max_p_value=1e-3,
                                      alpha=alpha)
        if step.decided:
            return step.passed, end
    raise AssertionError("the whole key always decides")


def test_false_match_rate_under_early_stopping_stays_below_alpha():
    gen = torch.Generator().manual_seed(0)
    alpha, runs = 0.05, 2000
    # a null model at the boundary p0, with a threshold it reaches often by luck on small prefixes
    claims = sum(_run(0.3, 0.3, 0.3, 100, alpha, gen)[0] for _ in range(runs))
    # the whole-key binomial rule adds its own (<= 1e-3) share; the e-value part is bounded by alpha
    assert claims / runs <= alpha


def test_a_derived_model_matches_early_and_an_independent_one_fails_early():
    gen = torch.Generator().manual_seed(1)
    passed, asked = _run(0.95, 0.1, 0.5, 100, 1e-3, gen)
    assert passed and asked <= 16
    passed, asked = _run(0.05, 0.1, 0.5, 100, 1e-3, gen)
    assert not passed and asked < 100


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
