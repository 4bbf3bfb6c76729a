"""SAC's decision (Guan et al.): the p-values of a distance, the judgement, and verify, on hand-made keys and models
that answer chosen logits (fast: no training, mutation-tested). What the module docstring promises: C_ij = cos(O_i,
O_j) of the (sharpened) probabilities, or of one-hot labels for a labels-only oracle; d = mean |C_source - C_suspect|;
fitted p = P[T_{K-1} <= (d - mu) / (s sqrt(1 + 1/K))], empirical p = (1 + #{d_k <= d}) / (1 + K); "match" iff
d < tau = min_k d_k AND the fitted p < max_p_value."""

import math
import re

import pytest
import torch
from scipy import stats
from test_kill_ownership import SHAPE, inputs
from test_kill_pairing import Table

from nnmark.errors import ArgumentError, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import sac
from nnmark.oracles import LabelsOracle, TorchOracle

N, K = 12, 10
SOURCE = 3 * torch.randn(N, K, generator=torch.Generator().manual_seed(1))
OTHER = 3 * torch.randn(N, K, generator=torch.Generator().manual_seed(2))
PROBABILITIES = TorchOracle(Table(SOURCE), SHAPE).probabilities(inputs(0, N))
NEAR = [0.15, 0.16, 0.17, 0.18, 0.19]
"""Calibration distances: tau 0.15, mean 0.17; d = 0 lies far below them (fitted p ~ 1e-4)."""
LABELS = [0.10, 0.11, 0.12, 0.13]


def _calibration(distances):
    mean = sum(distances) / len(distances)
    std = math.sqrt(sum((d - mean) ** 2 for d in distances) / (len(distances) - 1))
    return {"threshold": min(distances), "mean": mean, "std": std, "distances": list(distances)}


def _key(method=sac.METHOD, **config):
    config = {"max_p_value": 0.01, "temperature": 1.0, "variant": "m",
              "calibration": {"probabilities": _calibration(NEAR), "labels": _calibration(LABELS)}, **config}
    return KeyFile(method, config, inputs(0, N), PROBABILITIES.argmax(dim=1), extras={"probabilities": PROBABILITIES})


def spec_distance(a, b, temperature=1.0):
    """d of two probability tables (n, K) as the docstring defines it."""
    def c(p):
        p = torch.softmax(p.double().clamp_min(torch.finfo(torch.float32).tiny).log() / temperature, dim=1)
        unit = p / p.norm(dim=1, keepdim=True)
        return unit @ unit.T
    return (c(a) - c(b)).abs().mean().item()


def spec_p(d, distances):
    k, cal = len(distances), _calibration(distances)
    t = (d - cal["mean"]) / (cal["std"] * math.sqrt(1 + 1 / k))
    return stats.t.cdf(t, k - 1), (1 + sum(v <= d for v in distances)) / (1 + k)


# --- p-values and the judgement -------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [0.0, 0.15, 0.17, 0.185, 0.5])
def test_the_p_values_are_the_student_t_predictive_and_the_rank_among_the_calibration(d):
    fitted, empirical = sac.p_values(d, _calibration(NEAR))
    want_fitted, want_empirical = spec_p(d, NEAR)
    assert fitted == pytest.approx(want_fitted, rel=1e-9) and empirical == want_empirical
    assert isinstance(fitted, float)


def test_a_calibration_distance_equal_to_d_counts_in_the_empirical_p_value():
    assert sac.p_values(0.16, _calibration(NEAR))[1] == 3 / 6
    assert sac.p_values(0.3, _calibration([0.3, 0.4]))[0] == pytest.approx(stats.t.cdf(-0.05 / (
        math.sqrt(0.005) * math.sqrt(1.5)), 1), rel=1e-9)


def test_a_match_needs_d_below_tau_and_the_fitted_p_value_below_the_bound():
    cal = _calibration(NEAR)
    fitted, empirical = sac.p_values(0.1, cal)
    assert sac.judge(0.1, cal, 0.01) == {"distance": 0.1, "match": True, "p_value": fitted,
                                         "p_value_empirical": empirical, "threshold": 0.15}
    assert not sac.judge(0.1, cal, fitted)["match"]  # p exactly at the bound
    assert sac.judge(0.1, cal, fitted * 1.0001)["match"]
    assert not sac.judge(0.15, cal, 1.0)["match"]  # d exactly at tau
    wide = _calibration([0.2, 0.9])  # tau 0.2, but a spread so wide that d = 0.1 is no evidence
    assert not sac.judge(0.1, wide, 0.01)["match"] and sac.judge(0.1, wide, 0.5)["match"]


# --- verify ---------------------------------------------------------------------------------------------------------


def test_the_source_itself_matches_on_its_probabilities_and_on_its_labels():
    oracle = TorchOracle(Table(SOURCE), SHAPE)
    oracle.labels(inputs(0, 2))  # queries asked before are not this verdict's
    v = sac.verify(oracle, _key())
    fitted, empirical = spec_p(0.0, NEAR)
    assert v.passed is True and v.decision == "match" and v.method == sac.METHOD and v.queries == N
    assert v.statistic_name == "correlation_distance" and v.statistic == 0.0 and v.flipped == []
    labels_p = sac.p_values(0.0, _calibration(LABELS))
    assert v.details == {
        "output": "probabilities", "distance": 0.0, "match": True, "p_value": pytest.approx(fitted, rel=1e-9),
        "p_value_empirical": empirical, "threshold": 0.15, "max_p_value": 0.01, "variant": "m", "temperature": 1.0,
        "statistic": "correlation",
        "labels": {"distance": 0.0, "match": True, "p_value": labels_p[0], "p_value_empirical": 1 / 5,
                   "threshold": 0.1}}


def test_a_labels_only_oracle_is_judged_on_one_hot_labels_and_the_labels_calibration():
    oracle = LabelsOracle(TorchOracle(Table(SOURCE), SHAPE))
    v = sac.verify(oracle, _key())
    assert v.passed and v.details["output"] == "labels" and v.details["threshold"] == 0.1 and "labels" not in v.details
    assert v.queries == N and v.details["p_value"] == sac.p_values(0.0, _calibration(LABELS))[0]


def test_another_model_is_no_match_and_its_changed_labels_are_listed():
    v = sac.verify(TorchOracle(Table(OTHER), SHAPE), _key())
    d = spec_distance(PROBABILITIES, torch.softmax(OTHER, dim=1))
    assert v.passed is False and v.decision == "no match" and v.statistic == pytest.approx(d, rel=1e-6) and d > 0.15
    assert v.flipped == torch.nonzero(OTHER.argmax(dim=1) != SOURCE.argmax(dim=1)).flatten().tolist()
    assert v.details["match"] is False and v.details["labels"]["match"] is False


def test_the_outputs_are_compared_sharpened_at_the_keys_temperature():
    """A model with the source's logits halved keeps its labels; at T = 1 its probabilities are flatter (d > 0)."""
    flat = TorchOracle(Table(SOURCE / 2), SHAPE)
    for t in (1.0, 0.1):
        v = sac.verify(flat, _key(temperature=t))
        want = spec_distance(PROBABILITIES, torch.softmax(SOURCE / 2, dim=1), t)
        assert v.statistic == pytest.approx(want, rel=1e-5) and v.details["temperature"] == t and v.flipped == []
    assert sac.verify(flat, _key(temperature=1.0)).statistic > 2 * sac.verify(flat, _key(temperature=0.1)).statistic


# --- the agreement statistic ---------------------------------------------------------------------------------------

HALF = torch.cat([SOURCE[:9], OTHER[9:]])
"""A suspect with the source's logits on 9 of the 12 queries and another model's on the rest."""
AGREE = [0.5, 0.55, 0.6, 0.65, 0.7]
"""Agreement calibration distances: tau 0.5, mean 0.6."""


def spec_agreement(suspect, temperature=None):
    """1 - the suspect's mean mass on the source's labels: its probabilities sharpened at T, or its one-hot labels."""
    own = PROBABILITIES.argmax(dim=1)
    if temperature is None:
        return (suspect.argmax(dim=1) != own).double().mean().item()
    p = torch.softmax(torch.softmax(suspect.double(), dim=1).log() / temperature, dim=1)
    return 1 - p[torch.arange(N), own].mean().item()


def _agreement_key(labels=AGREE, **config):
    return _key(statistic="agreement", decide_on="labels", temperature=0.5,
                calibration={"probabilities": _calibration(AGREE), "labels": _calibration(labels)}, **config)


def test_the_agreement_distance_is_one_minus_the_suspects_mass_on_the_sources_labels():
    v = sac.verify(TorchOracle(Table(HALF), SHAPE), _agreement_key())
    d = spec_agreement(HALF)
    assert v.statistic_name == "agreement_distance" and v.details["output"] == "labels"
    assert v.statistic == pytest.approx(d, abs=1e-12) and 0 < d < 0.5
    assert v.details["probabilities"]["distance"] == pytest.approx(spec_agreement(HALF, 0.5), rel=1e-6)
    assert v.details["statistic"] == "agreement" and v.flipped == torch.nonzero(
        HALF.argmax(dim=1) != SOURCE.argmax(dim=1)).flatten().tolist()


def test_an_agreement_key_matches_the_sources_labels_not_another_models():
    same_labels = TorchOracle(Table(SOURCE / 4), SHAPE)
    assert sac.verify(same_labels, _agreement_key()).passed is True
    assert sac.verify(LabelsOracle(same_labels), _agreement_key()).passed is True
    other = sac.verify(TorchOracle(Table(OTHER), SHAPE), _agreement_key())
    assert other.passed is False and other.statistic == pytest.approx(spec_agreement(OTHER), abs=1e-12)


def test_an_agreement_match_needs_the_distance_below_the_threshold():
    """One calibration model at the suspect's labels distance d (tau = d) among 30 far ones: p stays tiny, so the
    strict d < tau alone says no match; with that model just above d it is a match."""
    oracle = TorchOracle(Table(HALF), SHAPE)
    d = spec_agreement(HALF)
    far = [d + 0.3 + 0.001 * i for i in range(30)]
    for tau, want in ((d, False), (d + 1e-9, True)):
        v = sac.verify(oracle, _agreement_key([tau, *far]))
        assert v.passed is want and v.details["p_value"] < 1e-4 and v.details["threshold"] == tau


@pytest.mark.parametrize("config", [{"statistic": "agreement", "decide_on": "probabilities"},
                                    {"statistic": "agreement"}, {"statistic": "rank"}])
def test_verify_refuses_an_unknown_statistic_or_agreement_deciding_on_probabilities(config):
    said = f"statistic {config['statistic']!r} deciding on {config.get('decide_on', 'probabilities')!r}"
    with pytest.raises(KeyFileError, match=f"^sac key config has {said}: need one of correlation, agreement, and "
                                           "agreement decides on labels$"):
        sac.verify(TorchOracle(Table(SOURCE), SHAPE), _key(**config))


@pytest.mark.parametrize("a, b", [((3, 4), (3, 5)), ((3, 4, 1), (3, 4, 1)), ((4,), (4,))])
def test_the_agreement_distance_needs_two_tables_of_one_shape(a, b):
    with pytest.raises(ArgumentError, match=rf"^need two \(n, K\) outputs of one shape, got {re.escape(str(a))} and "
                                            rf"{re.escape(str(b))}$"):
        sac.agreement_distance(torch.ones(a), torch.ones(b))


@pytest.mark.parametrize("key, match", [
    (lambda: _key("metafinger"), "not a sac key"),
    (lambda: _key(max_p_value=None), "lacks a numeric max_p_value"),
    (lambda: _key(max_p_value="small"), "lacks a numeric max_p_value"),
    (lambda: KeyFile(sac.METHOD, {k: v for k, v in _key().config.items() if k != "max_p_value"}, inputs(0, N),
                     PROBABILITIES.argmax(dim=1), extras={"probabilities": PROBABILITIES}), "lacks a numeric"),
    (lambda: _key(max_p_value=0.0), r"max_p_value outside \(0, 1\)"),
    (lambda: _key(max_p_value=1.0), r"max_p_value outside \(0, 1\)"),
])
def test_verify_refuses_keys_without_a_bound_in_range(key, match):
    with pytest.raises(KeyFileError, match=match):
        sac.verify(TorchOracle(Table(SOURCE), SHAPE), key())


def test_a_bound_just_inside_its_range_is_accepted():
    assert sac.verify(TorchOracle(Table(SOURCE), SHAPE), _key(max_p_value="0.5")).details["max_p_value"] == 0.5
    assert sac.verify(TorchOracle(Table(SOURCE), SHAPE), _key(variant=None)).details["variant"] is None
