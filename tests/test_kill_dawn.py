"""DAWN's verify on hand-made keys and a model that answers chosen labels (fast: no training, mutation-tested).
The rule the module docstring states: hits m = #{s = F_w(x)}, departures D = #{s != F(x)}; "match" iff
P[Bin(D, p0) >= m] < alpha, with p0 = 1/(K-1)."""

import pytest
import torch
from test_kill_ownership import answering, inputs

from nnmark.errors import KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import dawn
from nnmark.marks.ownership.stats import binomial_tail

N = 30
SOURCE = torch.arange(N) % 10
"""F(x): what the served model answers."""
WATERMARK = (SOURCE + 1 + torch.arange(N) % 9) % 10
"""F_w(x): the API's wrong answers, never F(x)."""
OTHER = (SOURCE + 1 + (torch.arange(N) + 1) % 9) % 10
"""A third label, neither F(x) nor F_w(x)."""
P0 = 1 / 9


def _key(method=dawn.METHOD, source=SOURCE, **config):
    return KeyFile(method, {"alpha": 1e-6, "p0": P0, **config}, inputs(0, N), WATERMARK,
                   extras={} if source is None else {"source_labels": source})


def _suspect(hits=0, others=0):
    """Answers F_w(x) on the first ``hits`` inputs, a third label on the next ``others``, F(x) elsewhere."""
    i = torch.arange(N)
    return answering(torch.where(i < hits, WATERMARK, torch.where(i < hits + others, OTHER, SOURCE)))


def test_hits_and_departures_decide_through_the_exact_conditional_binomial():
    assert all((WATERMARK != SOURCE) & (OTHER != SOURCE) & (OTHER != WATERMARK))
    oracle = _suspect(hits=9, others=3)
    oracle.labels(inputs(0, 2))  # queries asked before are not this verdict's
    v = dawn.verify(oracle, _key())
    p = binomial_tail(9, 12, P0)
    assert p < 1e-6 and v.passed is True and v.decision == "match" and v.method == dawn.METHOD and v.queries == N
    assert v.statistic_name == "watermark_accuracy" and v.statistic == 9 / N and v.flipped == list(range(9, N))
    assert v.details == {"n": N, "hits": 9, "departures": 12, "p0": P0, "p_value": p, "alpha": 1e-6}


def test_a_p_value_equal_to_alpha_is_no_match_and_just_below_it_is():
    p = binomial_tail(4, 10, P0)
    assert not dawn.verify(_suspect(hits=4, others=6), _key(alpha=p)).passed
    assert dawn.verify(_suspect(hits=4, others=6), _key(alpha=p * 1.0001)).passed


def test_departures_without_hits_and_a_suspect_that_never_departs_are_no_match():
    for suspect, departures in ((_suspect(others=N), N), (_suspect(), 0)):
        v = dawn.verify(suspect, _key(alpha=0.5))
        assert not v.passed and v.decision == "no match" and v.details["hits"] == 0
        assert v.details["departures"] == departures and v.details["p_value"] == 1.0


def test_more_departures_weaken_the_same_hits():
    """Five hits alone are strong evidence; the same five among thirty departures are what chance gives."""
    strong = dawn.verify(_suspect(hits=5), _key(alpha=1e-3))
    weak = dawn.verify(_suspect(hits=5, others=25), _key(alpha=1e-3))
    assert strong.passed and strong.details["p_value"] == binomial_tail(5, 5, P0)
    assert not weak.passed and weak.details["p_value"] == binomial_tail(5, N, P0)


def test_p0_is_the_keys():
    v = dawn.verify(_suspect(hits=3, others=3), _key(p0=0.5, alpha=0.9))
    assert v.details["p_value"] == binomial_tail(3, 6, 0.5) and v.passed
    assert not dawn.verify(_suspect(hits=3, others=3), _key(p0=0.5, alpha=binomial_tail(3, 6, 0.5))).passed


@pytest.mark.parametrize("key, match", [
    (lambda: _key("ipguard"), "not a dawn key"),
    (lambda: KeyFile(dawn.METHOD, {"p0": P0}, inputs(0, N), WATERMARK, extras={"source_labels": SOURCE}),
     "lacks a numeric alpha or p0"),
    (lambda: KeyFile(dawn.METHOD, {"alpha": 0.01}, inputs(0, N), WATERMARK, extras={"source_labels": SOURCE}),
     "lacks a numeric alpha or p0"),
    (lambda: _key(source=None), "its source labels"),
    (lambda: _key(alpha="small"), "lacks a numeric alpha or p0"),
    (lambda: _key(alpha=None), "lacks a numeric alpha or p0"),
    (lambda: _key(alpha=0), "outside"),
    (lambda: _key(alpha=1), "outside"),
    (lambda: _key(p0=0), "outside"),
    (lambda: _key(p0=1), "outside"),
    (lambda: _key(source=SOURCE[:-1]), "do not pair"),
    (lambda: _key(source=torch.where(torch.arange(N) == N - 1, WATERMARK, SOURCE)), "do not pair"),
])
def test_verify_refuses_keys_it_cannot_judge(key, match):
    with pytest.raises(KeyFileError, match=match):
        dawn.verify(_suspect(hits=N), key())


def test_alpha_and_p0_just_inside_their_range_are_accepted():
    assert dawn.verify(_suspect(hits=N), _key(alpha=1 - 1e-12, p0=1e-12)).passed
    assert dawn.verify(_suspect(hits=N), _key(alpha=1e-300, p0=1 - 1e-12)).passed is False
