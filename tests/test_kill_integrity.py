"""Algorithm 2 of Yin et al. (``common.verify_labels``, DBI's and AID's verify) on hand-made keys and a model that
answers chosen labels (fast: no training, mutation-tested). The rule: TAMPERED when any query's label differs from
the key's, INTACT only when every one of them matches; ChangeRate (eq. 5) the share that differs."""

import pytest
import torch
from test_kill_ownership import answering, inputs

from nnmark.keys import KeyFile
from nnmark.marks.integrity import aid, dbi

N = 12
EXPECTED = torch.arange(N) % 10


def _key(method):
    return KeyFile(method, {}, inputs(0, N), EXPECTED.clone())


@pytest.fixture(params=[(dbi.METHOD, dbi.verify), (aid.METHOD, aid.verify)], ids=["dbi", "aid"])
def method(request):
    return request.param


def test_a_model_that_answers_every_query_as_the_key_is_intact(method):
    name, verify = method
    oracle = answering(EXPECTED)
    oracle.labels(inputs(0, 3))  # queries asked before are not this verdict's
    v = verify(oracle, _key(name))
    assert v.passed is True and v.decision == "intact" and v.method == name
    assert v.statistic_name == "change_rate" and v.statistic == 0.0 and v.flipped == []
    assert v.queries == N and v.details == {"n": N}


@pytest.mark.parametrize("changed", [[0], [N - 1], [2, 5, 7]])
def test_any_changed_label_is_tampered_and_named(method, changed):
    name, verify = method
    answers = EXPECTED.clone()
    answers[changed] = (answers[changed] + 1) % 10
    v = verify(answering(answers), _key(name))
    assert v.passed is False and v.decision == "tampered" and v.method == name
    assert v.flipped == changed and v.statistic == pytest.approx(len(changed) / N)
    assert v.queries == N and v.details == {"n": N}


def test_a_model_that_changes_every_label_has_change_rate_one(method):
    name, verify = method
    v = verify(answering((EXPECTED + 3) % 10), _key(name))
    assert not v.passed and v.statistic == 1.0 and v.flipped == list(range(N))
