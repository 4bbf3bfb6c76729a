"""Licence tracing's accusation (``licensing.trace`` and what it decides with) on hand-made registries and a model
that answers chosen labels (fast: no fine-tuning, mutation-tested). What the module docstring promises: n_{f,s}
counts family f's answers s; S_l = sum_f n_{f, c_{l,f}} over the families l carries; under the null c_l is uniform on
A_1 x ... x A_m, and p_l = P[S >= S_l] exactly (``code``), or P[Bin(k, p0_l) >= h_l] (``onehot``); licensee l is
accused iff p_l <= epsilon_1 / N, most certain first; else "unmarked source" when at least ``source_agreement`` of the
answers are the source's, else "no licensee"."""

import itertools
import math

import pytest
import torch
from scipy import stats
from test_kill_ownership import answering, inputs

from nnmark.errors import ArgumentError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import licensing

NC, K = 10, 2
FAMS = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [0, 2]])
M = len(FAMS)
FAMILY = torch.arange(M).repeat_interleave(K)
"""Family of each query: K queries per family, family by family."""
CODES = torch.tensor([[2, 0, 0, 0, 0, 1],    # alice
                      [3, 1, 1, 1, 1, 3]])   # bob
ALPHABET = licensing.alphabets(FAMS, NC)
"""A_f: every class but the family's base classes (8 symbols each)."""
SOURCE = FAMS[FAMILY, 0]
"""The unmarked source answers each trigger with its top-left class i (outside every alphabet)."""


def _key(codes=CODES, names=("alice", "bob"), scheme="code", null=None, epsilon=1e-4, agreement=0.9):
    config = {"licensees": [{"licensee": n} for n in names], "num_classes": NC, "scheme": scheme, "per_family": K,
              "epsilon": epsilon, "source_agreement": agreement}
    null = torch.full((len(names),), 1.0 / NC, dtype=torch.float64) if null is None else null
    extras = {"family": FAMILY, "families": FAMS, "alphabet": ALPHABET.to(torch.int8), "codes": codes, "null": null}
    return KeyFile(licensing.METHOD, config, inputs(0, len(FAMILY)), SOURCE.clone(), extras=extras)


def _answering(per_family):
    """Answers family f's queries with ``per_family[f]`` (a symbol per family)."""
    return answering(torch.as_tensor(per_family)[FAMILY])


# --- the counts, scores and exact null --------------------------------------------------------------------------


def test_symbol_counts_count_each_familys_answers():
    answers = torch.tensor([2, 2, 0, 5, 4, 4, 6, 6, 9, 9, 1, 1])
    counts = licensing.symbol_counts(answers, FAMILY, M, NC)
    assert counts.dtype == torch.int64 and counts.shape == (M, NC) and counts.sum() == len(answers)
    assert counts[0, 2] == 2 and counts[1, 0] == 1 and counts[1, 5] == 1 and counts[2, 4] == 2 and counts[5, 1] == 2


def test_a_score_sums_the_answers_of_the_symbols_a_licensee_carries():
    counts = licensing.symbol_counts(torch.tensor([2, 2, 0, 5, 4, 4, 6, 6, 9, 9, 1, 1]), FAMILY, M, NC)
    assert licensing.scores(counts, CODES).tolist() == [2 + 1 + 2, 0]
    onehot = torch.tensor([[2, -1, -1, -1, -1, -1], [-1, 5, -1, -1, -1, -1]])
    assert licensing.scores(counts, onehot).tolist() == [2, 1]


def _brute_force_tail(counts, allowed, s):
    """P[sum_f n_{f,U_f} >= s], U_f uniform on A_f: every codeword enumerated."""
    symbols = [a.nonzero().flatten().tolist() for a in allowed]
    total = sum(sum(int(counts[f, u]) for f, u in enumerate(c)) >= s for c in itertools.product(*symbols))
    return total / math.prod(len(a) for a in symbols)


def test_the_null_law_is_exact():
    counts = torch.tensor([[0, 3, 1, 0], [2, 0, 2, 1], [1, 1, 1, 1]])
    allowed = torch.tensor([[True, True, True, False], [True, False, True, True], [False, True, True, True]])
    pmf = licensing.null_pmf(counts, allowed)
    assert pmf.dtype == torch.float64 and len(pmf) == 1 + 3 + 2 + 1 and pmf.sum().item() == pytest.approx(1.0)
    for s in range(len(pmf)):
        assert pmf[s:].sum().item() == pytest.approx(_brute_force_tail(counts, allowed, s), abs=1e-12)
    codes = torch.tensor([[1, 0, 1], [2, 3, 3], [0, 2, 2]])
    p = licensing.p_values(counts, codes, allowed)
    want = [_brute_force_tail(counts, allowed, s) for s in licensing.scores(counts, codes).tolist()]
    assert p.tolist() == pytest.approx(want, abs=1e-12)


def test_the_onehot_null_is_a_binomial_tail_at_each_licensees_rate():
    counts = licensing.symbol_counts(torch.tensor([2, 2, 5, 0, 4, 4, 6, 6, 9, 9, 1, 1]), FAMILY, M, NC)
    codes = torch.tensor([[2, -1, -1, -1, -1, -1], [-1, 5, -1, -1, -1, -1], [-1, -1, 0, -1, -1, -1]])
    null = torch.tensor([0.1, 0.25, 0.5], dtype=torch.float64)
    p = licensing.onehot_p_values(counts, codes, null, K)
    assert p.dtype == torch.float64
    assert p.tolist() == pytest.approx([stats.binom.sf(h - 1, K, q) for h, q in [(2, 0.1), (1, 0.25), (0, 0.5)]])


def test_the_level_is_epsilon_over_the_licensees():
    assert licensing.threshold(1e-4, 4) == 2.5e-5 and licensing.threshold(0.5, 1) == 0.5
    for epsilon, n in [(0.0, 2), (1.0, 2), (1e-4, 0), (-0.1, 2)]:
        with pytest.raises(ArgumentError, match="need 0 < epsilon < 1 and at least one licensee"):
            licensing.threshold(epsilon, n)


def test_a_licensee_at_the_level_is_accused_and_the_most_certain_comes_first():
    p = torch.tensor([0.05, 0.01, 0.0500001, 0.02], dtype=torch.float64)
    assert licensing.accused(p, ["a", "b", "c", "d"], 0.2) == [
        {"licensee": "b", "p_value": 0.01}, {"licensee": "d", "p_value": 0.02}, {"licensee": "a", "p_value": 0.05}]
    assert licensing.accused(p, ["a", "b", "c", "d"], 0.03) == []


# --- trace ------------------------------------------------------------------------------------------------------


def test_a_copy_that_answers_its_codeword_is_traced_to_its_licensee():
    oracle = _answering(CODES[0])
    oracle.labels(inputs(0, 3))  # queries asked before are not this verdict's
    v = licensing.trace(oracle, _key())
    p_alice = (1 / 8) ** M  # every family answered alice's symbol: P[S >= 12] = P[U_f = c_f for all f]
    assert v.passed is True and v.decision == "traced to alice" and v.method == licensing.METHOD
    assert v.statistic_name == "min_p_value" and v.statistic == pytest.approx(p_alice) and v.flipped == []
    assert v.queries == M * K
    assert v.details == {
        "accused": [{"licensee": "alice", "p_value": pytest.approx(p_alice)}], "p_value": pytest.approx(p_alice),
        "max_p_value": 5e-5, "epsilon": 1e-4, "scheme": "code", "most_likely": "alice",
        "p_values": {"alice": pytest.approx(p_alice), "bob": 1.0}, "scores": {"alice": M * K, "bob": 0},
        "source_agreement": 0.0, "n": M * K}


def test_too_little_evidence_accuses_no_one():
    """Alice's symbols on 4 of 6 families (bob's on 2): p = P[Bin(6, 1/8) >= 4] ~ 3e-3, above 1e-4 / 2."""
    v = licensing.trace(_answering([2, 0, 0, 0, 1, 3]), _key())
    assert v.passed is False and v.decision == "no licensee" and v.details["accused"] == []
    assert v.statistic == pytest.approx(stats.binom.sf(3, M, 1 / 8)) and v.details["most_likely"] == "alice"
    assert v.flipped == [8, 9, 10, 11]


def test_colluders_are_both_accused_most_certain_first():
    answers = torch.tensor([2, 2, 0, 0, 0, 0, 0, 0, 1, 1, 3, 3])  # alice on 4 families, bob on 2
    v = licensing.trace(answering(answers), _key(epsilon=0.5))
    assert v.passed and v.decision == "traced to alice, bob" and v.details["max_p_value"] == 0.25
    assert [a["licensee"] for a in v.details["accused"]] == ["alice", "bob"]
    assert v.details["p_values"]["bob"] == pytest.approx(stats.binom.sf(1, M, 1 / 8))


@pytest.mark.parametrize("agreeing, decision", [(12, "unmarked source"), (9, "unmarked source"), (8, "no licensee")])
def test_a_suspect_that_answers_as_the_source_is_the_unmarked_source(agreeing, decision):
    answers = torch.where(torch.arange(M * K) < agreeing, SOURCE, FAMS[FAMILY, 1])
    v = licensing.trace(answering(answers), _key(agreement=0.75))
    assert v.passed is False and v.decision == decision and v.details["source_agreement"] == agreeing / (M * K)
    assert v.details["p_values"] == {"alice": 1.0, "bob": 1.0} and v.details["scores"] == {"alice": 0, "bob": 0}


def test_the_onehot_scheme_accuses_on_its_own_familys_hits_against_its_null():
    codes = torch.tensor([[2, -1, -1, -1, -1, -1], [-1, 1, -1, -1, -1, -1]])
    names = ("alice", "bob")
    null = torch.tensor([0.001, 0.5], dtype=torch.float64)
    v = licensing.trace(_answering([2, 1, 0, 0, 0, 0]), _key(codes, names, "onehot", null, epsilon=0.01))
    assert v.passed and v.decision == "traced to alice" and v.details["scheme"] == "onehot"
    assert v.details["p_values"] == {"alice": pytest.approx(1e-6), "bob": pytest.approx(0.25)}
    assert v.flipped == list(range(2, M * K))  # alice's codeword names only family 0 (-1 elsewhere)
