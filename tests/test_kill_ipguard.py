"""IPGuard's verify on hand-made keys and a model that answers chosen labels (fast: no training, mutation-tested).
The rule the module docstring states: "match" iff the matching rate (the share of points the suspect labels as the
source did) is >= the key's threshold; the p-value P[Bin(n, p0) >= hits] under the key's p0 is reported, not used."""

import pytest
import torch
from test_kill_ownership import hitting, inputs

from nnmark.errors import KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import ipguard
from nnmark.marks.ownership.stats import binomial_tail

N = 40
EXPECTED = torch.arange(N) % 10


def _key(method=ipguard.METHOD, **config):
    return KeyFile(method, {"threshold": 0.75, "p0": 0.1, **config}, inputs(0, N), EXPECTED)


def _suspect(hits):
    return hitting(EXPECTED, hits)


def test_a_rate_exactly_at_the_threshold_matches_and_one_point_less_does_not():
    oracle = _suspect(30)
    oracle.labels(inputs(0, 3))  # queries asked before are not this verdict's
    v = ipguard.verify(oracle, _key())
    assert v.passed is True and v.decision == "match" and v.method == ipguard.METHOD and v.queries == N
    assert v.statistic_name == "matching_rate" and v.statistic == 0.75 and v.flipped == list(range(30, N))
    assert v.details == {"n": N, "hits": 30, "p0": 0.1, "p_value": binomial_tail(30, N, 0.1), "threshold": 0.75}
    below = ipguard.verify(_suspect(29), _key())
    assert below.passed is False and below.decision == "no match" and below.statistic == 29 / N


def test_the_threshold_not_the_p_value_decides():
    """Under p0 = 0.9 a rate of 0.8 is no evidence (p ~ 0.98) but meets the threshold 0.75: a match."""
    v = ipguard.verify(_suspect(32), _key(p0=0.9))
    assert v.passed and v.details["p_value"] == pytest.approx(binomial_tail(32, N, 0.9)) and v.details["p_value"] > 0.9
    assert ipguard.verify(_suspect(N), _key(threshold=1.0)).passed
    assert not ipguard.verify(_suspect(N - 1), _key(threshold=1.0)).passed
    assert ipguard.verify(_suspect(0), _key(threshold=0.0, p0=0.0)).passed
    assert ipguard.verify(_suspect(N), _key(threshold="0.75", p0=1)).passed


@pytest.mark.parametrize("key, match", [
    (lambda: _key("metafinger"), "not an ipguard key"),
    (lambda: KeyFile(ipguard.METHOD, {"p0": 0.1}, inputs(0, N), EXPECTED), "lacks a numeric threshold or p0"),
    (lambda: KeyFile(ipguard.METHOD, {"threshold": 0.75}, inputs(0, N), EXPECTED), "lacks a numeric threshold or p0"),
    (lambda: _key(threshold=None), "lacks a numeric threshold or p0"),
    (lambda: _key(p0="chance"), "lacks a numeric threshold or p0"),
    (lambda: _key(threshold=1.01), "outside"),
    (lambda: _key(threshold=-0.01), "outside"),
    (lambda: _key(p0=1.01), "outside"),
    (lambda: _key(p0=-0.01), "outside"),
])
def test_verify_refuses_keys_without_a_threshold_and_null_in_range(key, match):
    with pytest.raises(KeyFileError, match=match):
        ipguard.verify(_suspect(N), key())
