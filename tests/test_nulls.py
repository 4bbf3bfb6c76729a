"""Each ownership method's stated null, simulated: a suspect independent of the source answers each key query
as the source did with the null's chance p0. The p-value a verdict reports must then be valid (P[p <= a] <= a),
and the decision rule must keep its false-claim rate at or below what the method states. The trial counts are
large enough that a p-value off by one hit (P[Bin >= hits + 1], about twice the rate at these levels) fails."""

from __future__ import annotations

import math

import pytest
import torch

from nnmark.keys import KeyFile
from nnmark.marks.ownership import ipguard, metafinger
from nnmark.oracles import Oracle

N, K, TRIALS = 100, 10, 3000


class NullOracle(Oracle):
    """Labels only: each key query answered with the key's expected label with chance ``p0``, else with one of the
    other K - 1 labels drawn uniformly; one fresh independent model per ``labels`` call."""

    def __init__(self, key: KeyFile, p0: float, generator: torch.Generator):
        super().__init__(tuple(key.queries.shape[1:]), K)
        self.expected, self.p0, self.generator = key.expected, p0, generator

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        assert len(x) == len(self.expected)
        hit = torch.rand(len(x), generator=self.generator) < self.p0
        other = (self.expected + torch.randint(1, K, (len(x),), generator=self.generator)) % K
        return torch.where(hit, self.expected, other)


def _key(method: str, config: dict) -> KeyFile:
    gen = torch.Generator().manual_seed(0)
    return KeyFile(method=method, config=config, queries=torch.rand(N, 1, 8, 8, generator=gen),
                   expected=torch.randint(0, K, (N,), generator=gen))


def _verdicts(verify, key: KeyFile, p0: float, seed: int) -> list:
    oracle = NullOracle(key, p0, torch.Generator().manual_seed(seed))
    return [verify(oracle, key) for _ in range(TRIALS)]


def _bound(rate: float) -> float:
    """``rate`` plus three binomial standard errors of a TRIALS-trial estimate."""
    return rate + 3 * math.sqrt(rate * (1 - rate) / TRIALS)


IPGUARD = {"threshold": ipguard.DEFAULT_THRESHOLD, "p0": 1.0 / K}
METAFINGER = {"p0": 0.3, "threshold": metafinger.DEFAULT_THRESHOLD, "max_p_value": metafinger.DEFAULT_MAX_P_VALUE}


@pytest.mark.parametrize("method, verify, config", [
    (ipguard.METHOD, ipguard.verify, IPGUARD),
    (metafinger.METHOD, metafinger.verify, METAFINGER),
])
@pytest.mark.parametrize("level", [0.01, 0.05, 0.2])
def test_the_reported_p_value_is_valid_under_the_stated_null(method, verify, config, level):
    key = _key(method, config)
    p = [v.details["p_value"] for v in _verdicts(verify, key, config["p0"], seed=1)]
    assert sum(x <= level for x in p) / TRIALS <= _bound(level)
    # and not vacuous: the p-values spread over (0, 1], as a valid discrete p-value does
    assert sum(x <= 2 * level for x in p) / TRIALS > level / 2


def test_ipguard_threshold_never_claims_a_model_at_the_transfer_rate_of_independent_models():
    """Boundary points transfer to independent models well above 1/K (about half of them on digits, ipguard's
    docstring): the threshold 0.75, not the chance null, is what keeps them out, P[Bin(100, 0.5) >= 75] < 1e-6."""
    key = _key(ipguard.METHOD, IPGUARD)
    verdicts = _verdicts(ipguard.verify, key, 0.5, seed=2)
    assert not any(v.passed for v in verdicts)
    assert max(v.statistic for v in verdicts) < ipguard.DEFAULT_THRESHOLD


def test_metafinger_false_claims_at_its_calibrated_p0_stay_below_max_p_value():
    """A null just below the threshold (p0 = 0.45, so the 0.5 accuracy threshold alone would claim a third of
    the models): the p-value rule keeps false claims at or below max_p_value."""
    config = {**METAFINGER, "p0": 0.45}
    key = _key(metafinger.METHOD, config)
    verdicts = _verdicts(metafinger.verify, key, config["p0"], seed=3)
    assert sum(v.statistic >= config["threshold"] for v in verdicts) / TRIALS > 0.1
    assert sum(v.passed for v in verdicts) / TRIALS <= _bound(config["max_p_value"])
