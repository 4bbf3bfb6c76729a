"""Each watermark method's verify (coupled, Zhang / Adi, frontier stitching) on hand-made keys and a model that
answers chosen labels (fast: no training, mutation-tested). The rule: watermarked iff s >= 0.5 and
P[Bin(n, p0) >= k] < 1e-3, p0 the method's stated null."""

import pytest
import torch

from nnmark.errors import InputError, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import backdoor_wm, coupled, frontier
from nnmark.marks.ownership.stats import binomial_tail
from nnmark.oracles import LabelsOracle, TorchOracle

SHAPE = (1, 2, 2)


class Lookup(torch.nn.Module):
    """Labels the input whose pixels are i / 1024 with ``labels[i]`` (a model answering chosen labels)."""

    def __init__(self, labels, classes=10):
        super().__init__()
        self.labels, self.classes = torch.as_tensor(labels), classes

    def forward(self, x):
        i = (x[:, 0, 0, 0].double() * 1024).round().long()
        return torch.nn.functional.one_hot(self.labels[i], self.classes).float() * 20


def inputs(start, n):
    """n inputs that ``Lookup`` tells apart: pixels (start + j) / 1024."""
    return ((start + torch.arange(n)).double() / 1024).view(n, 1, 1, 1).expand(n, *SHAPE).float().contiguous()


def answering(labels, classes=10):
    """A label-only oracle answering ``labels`` (one per ``inputs`` index)."""
    return LabelsOracle(TorchOracle(Lookup(labels, classes), SHAPE))


def hitting(expected, hits):
    """Answers ``expected`` (10 classes) on the first ``hits`` inputs, the next class elsewhere."""
    return answering(torch.where(torch.arange(len(expected)) < hits, expected, (expected + 1) % 10))


def _labels(total, **runs):
    """``total`` labels 0, with the given (start, stop, label) runs."""
    out = torch.zeros(total, dtype=torch.int64)
    for start, stop, label in runs.values():
        out[start:stop] = label
    return out


# --- coupled (and Zhang): 90 triggers expecting the target t = 1; 100 plain images; 100 clean images -------------
N, PLAIN, CLEAN = coupled.N_VERIFY, 100, 100


def _coupled_key(method=coupled.METHOD, expected=None):
    extras = {"plain": inputs(N, PLAIN), "clean": inputs(N + PLAIN, CLEAN)}
    expected = torch.ones(N, dtype=torch.int64) if expected is None else expected
    return KeyFile(method, {}, inputs(0, N), expected, extras=extras)


def _coupled_model(hits, plain=0, clean=0, classes=10):
    """Answers t = 1 on the first ``hits`` triggers, ``plain`` plain and ``clean`` clean images; 0 elsewhere."""
    return answering(_labels(N + PLAIN + CLEAN + 10, h=(0, hits, 1), p=(N, N + plain, 1),
                             c=(N + PLAIN, N + PLAIN + clean, 1)), classes)


@pytest.mark.parametrize("method", [coupled.METHOD, backdoor_wm.ZHANG])
def test_coupled_finds_the_watermark_from_half_the_triggers(method):
    key = _coupled_key(method)
    verify = coupled.verify if method == coupled.METHOD else backdoor_wm.verify
    v = verify(_coupled_model(45), key)
    assert v.passed and v.decision == "watermarked" and v.method == method and v.statistic == 0.5
    assert v.queries == N + PLAIN + CLEAN and v.flipped == list(range(45, N))
    assert v.details["null"] == 0.1 and v.details["target"] == 1 and v.details["chance"] == 0.1
    assert v.details["rate_plain"] == 0.0 and v.details["rate_clean"] == 0.0
    below = verify(_coupled_model(44), key)
    assert not below.passed and below.decision == "not watermarked"


@pytest.mark.parametrize("where", ["plain", "clean"])
def test_a_model_that_answers_the_target_on_ordinary_images_raises_the_null(where):
    """p0 = max(1/N_c, rate_plain, rate_clean): 48 of 90 triggers suffice against 1/10, not against a model that
    labels 40% of ordinary images t."""
    assert coupled.verify(_coupled_model(48), _coupled_key()).passed
    v = coupled.verify(_coupled_model(48, **{where: 40}), _coupled_key())
    assert v.details["null"] == pytest.approx(0.4) and v.details[f"rate_{where}"] == pytest.approx(0.4)
    assert not v.passed and v.details["p_value"] == pytest.approx(binomial_tail(48, N, 0.4))
    assert coupled.verify(_coupled_model(70, **{where: 40}), _coupled_key()).passed


def test_two_classes_make_chance_the_null():
    v = coupled.verify(_coupled_model(55, classes=2), _coupled_key())
    assert v.details["null"] == 0.5 and v.details["chance"] == 0.5 and not v.passed  # P[Bin(90, .5) >= 55] ~ 0.02
    assert coupled.verify(_coupled_model(70, classes=2), _coupled_key()).passed


def test_coupled_judges_on_the_given_clean_images():
    key = _coupled_key()
    v = coupled.verify(_coupled_model(55), key, clean_x=inputs(0, 20))  # the triggers: 20 of 20 are t
    assert v.details["rate_clean"] == 1.0 and not v.passed
    with pytest.raises(InputError):
        coupled.verify(_coupled_model(55), key, clean_x=inputs(0, 4)[:, :, :1])


@pytest.mark.parametrize("key, match", [
    (lambda: _coupled_key("adi"), "not a coupled key"),
    (lambda: KeyFile("coupled", {}, inputs(0, N), torch.ones(N, dtype=torch.int64), extras={"plain": inputs(N, 4)}),
     "lacks the extras"),
    (lambda: KeyFile("coupled", {}, inputs(0, N), torch.ones(N, dtype=torch.int64), extras={"clean": inputs(N, 4)}),
     "lacks the extras"),
    (lambda: _coupled_key(expected=torch.cat([torch.ones(N - 1), torch.zeros(1)]).long()), "must all be the target"),
])
def test_coupled_refuses_keys_that_are_not_its_own(key, match):
    with pytest.raises(KeyFileError, match=match):
        coupled.verify(_coupled_model(90), key())


# --- Adi and frontier stitching: queries that each expect their own label ------------------------------------------
M = 40


def _labelled_key(method, expected, clean=20):
    return KeyFile(method, {}, inputs(0, M), expected, extras={"clean": inputs(M, clean)})


SPREAD = torch.arange(M) % 10
"""Expected labels spread over 10 classes: f_c = 0.1 for each."""


def _model(expected, hits, clean_label=None, classes=10):
    """Answers ``expected`` on the first ``hits`` queries and the next class elsewhere; the clean images ``0, 1, ...``
    (or all ``clean_label``)."""
    answers = torch.where(torch.arange(M) < hits, expected, (expected + 1) % classes)
    clean = torch.arange(20) % classes if clean_label is None else torch.full((20,), clean_label)
    return answering(torch.cat([answers, clean]), classes)


def test_adi_finds_the_watermark_from_half_the_queries_against_chance():
    key = _labelled_key("adi", SPREAD)
    v = backdoor_wm.verify(_model(SPREAD, 20), key)
    assert v.passed and v.method == "adi" and v.details["null"] == pytest.approx(0.1) and v.queries == M + 20
    assert v.details["label_share"] == pytest.approx(0.1) and v.details["chance"] == pytest.approx(0.1)
    assert v.details["rate_clean"] == pytest.approx(0.1) and v.flipped == list(range(20, M))
    assert not backdoor_wm.verify(_model(SPREAD, 19), key).passed
    assert backdoor_wm.verify(_model(SPREAD, 40, clean_label=3), key).details["rate_clean"] == 1.0


def test_a_key_of_one_class_cannot_be_matched_by_a_model_that_answers_it_everywhere():
    """p0 = max(1/N_c, max_c f_c): labels 60% of one class need a rate far above 60%."""
    skewed = torch.where(torch.arange(M) < 24, 3, torch.arange(M) % 3)
    v = backdoor_wm.verify(_model(skewed, 30), _labelled_key("adi", skewed))
    assert v.details["label_share"] == pytest.approx(0.6) and v.details["null"] == pytest.approx(0.6)
    assert not v.passed and v.details["p_value"] == pytest.approx(binomial_tail(30, M, 0.6))
    assert backdoor_wm.verify(_model(skewed, 40), _labelled_key("adi", skewed)).passed


@pytest.mark.parametrize("method, verify", [("adi", backdoor_wm.verify), ("frontier", frontier.verify)])
def test_labelled_keys_judge_on_the_given_clean_images_and_refuse_what_does_not_fit(method, verify):
    key = _labelled_key(method, SPREAD)
    assert verify(_model(SPREAD, 40), key, clean_x=inputs(0, 10)).details["rate_clean"] == pytest.approx(0.1)
    with pytest.raises(InputError):
        verify(_model(SPREAD, 40), key, clean_x=torch.rand(3, 1, 2, 3))
    with pytest.raises(KeyFileError, match="lacks the extra 'clean'"):
        verify(_model(SPREAD, 40), KeyFile(method, {}, key.queries, key.expected))
    with pytest.raises(KeyFileError, match=f"{method} key expects label 9; the model has 9 classes"):
        verify(answering(torch.zeros(M + 20, dtype=torch.int64), 9), key)
    assert verify(answering(torch.cat([SPREAD, torch.zeros(20, dtype=torch.int64)]), 10), key).passed


@pytest.mark.parametrize("method, verify", [("coupled", backdoor_wm.verify), ("frontier", backdoor_wm.verify),
                                            ("adi", frontier.verify), ("zhang", frontier.verify)])
def test_each_verify_refuses_another_methods_key(method, verify):
    with pytest.raises(KeyFileError, match="not a"):
        verify(_model(SPREAD, 40), _labelled_key(method, SPREAD))


def test_frontier_stitching_tests_against_at_least_one_half():
    """p0 = max(1/2, max_c f_c): a frontier key's queries sit on the boundary, where either side is likely."""
    key = _labelled_key("frontier", SPREAD)
    v = frontier.verify(_model(SPREAD, 32), key)
    assert v.details["null"] == 0.5 and v.passed and v.method == "frontier"  # P[Bin(40, .5) >= 32] ~ 1.1e-4
    assert not frontier.verify(_model(SPREAD, 30), key).passed  # ~ 1.1e-3
    skewed = torch.where(torch.arange(M) < 28, 3, torch.arange(M) % 3)
    assert frontier.verify(_model(skewed, 34), _labelled_key("frontier", skewed)).details["null"] == pytest.approx(0.7)


@pytest.mark.parametrize("hits", [28, 30, 31, 32, 40])
def test_frontier_reports_mismatches_and_passes_exactly_when_they_are_at_most_theta(hits):
    v = frontier.verify(_model(SPREAD, hits), _labelled_key("frontier", SPREAD))
    assert v.details["mismatches"] == M - hits and v.details["successes"] == hits
    assert v.details["theta"] == frontier.theta(M, 0.5)
    assert v.passed == (v.details["mismatches"] <= v.details["theta"])


@pytest.mark.parametrize("n, null", [(40, 0.5), (20, 0.5), (100, 0.7), (10, 0.1), (5, 0.5), (1, 0.0001)])
def test_theta_is_the_largest_significant_number_of_mismatches(n, null):
    significant = [m for m in range(n + 1) if binomial_tail(n - m, n, null) < coupled.ALPHA]
    assert frontier.theta(n, null) == (max(significant) if significant else -1)
    assert frontier.theta(n, null, alpha=0.5) == max(m for m in range(n + 1) if binomial_tail(n - m, n, null) < 0.5)


def test_a_verdict_counts_only_the_queries_it_asked():
    """An oracle that has answered before: each verdict's queries are its own."""
    oracle = _coupled_model(45)
    assert [coupled.verify(oracle, _coupled_key()).queries for _ in range(2)] == [N + PLAIN + CLEAN] * 2
    oracle = _model(SPREAD, 40)
    assert [backdoor_wm.verify(oracle, _labelled_key("adi", SPREAD)).queries for _ in range(2)] == [M + 20] * 2


def test_a_single_trigger_is_never_significant():
    key = KeyFile("coupled", {}, inputs(0, 1), torch.ones(1, dtype=torch.int64),
                  extras={"plain": inputs(N, PLAIN), "clean": inputs(N + PLAIN, CLEAN)})
    v = coupled.verify(_coupled_model(1), key)
    assert v.statistic == 1.0 and v.details["p_value"] == pytest.approx(0.1) and not v.passed


def test_zhang_keys_are_judged_on_the_given_clean_images_and_other_keys_named():
    v = backdoor_wm.verify(_coupled_model(55), _coupled_key(backdoor_wm.ZHANG), clean_x=inputs(0, 20))
    assert v.details["rate_clean"] == 1.0 and not v.passed
    with pytest.raises(KeyFileError, match="^not a zhang or adi key: method 'frontier'$"):
        backdoor_wm.verify(_coupled_model(55), _labelled_key("frontier", SPREAD))


def test_theta_holds_for_any_bound():
    """With a bound above 1 every number of mismatches up to n is 'significant': theta = n."""
    assert frontier.theta(10, 0.5, alpha=1.5) == 10
