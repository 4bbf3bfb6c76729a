"""iNNformant's identify and verify on a hand-made key and a model that answers chosen labels (fast: no boundary
search, mutation-tested)."""

import pytest
import torch
from test_kill_ownership import answering, inputs

from nnmark.errors import KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.telltale import innformant

N = 6
F32 = torch.tensor([0, 1, 2, 3, 4, 5])
F64 = torch.tensor([0, 1, 2, 3, 4, 6])  # the last sample tells the environments apart
SOURCE_LABELS = torch.tensor([7, 7, 7, 8, 8, 8])


def _key(env_labels=None, reference="float32", method=innformant.METHOD, drop=(), **config):
    env_labels = torch.stack([F32, F64], dim=1) if env_labels is None else env_labels
    extras = {"env_labels": env_labels, "sources": inputs(N, N), "source_labels": SOURCE_LABELS,
              "source_index": torch.arange(N), "local_steps": torch.ones(N, dtype=torch.int64),
              "remote_steps": torch.ones(N, dtype=torch.int64), "psnr": torch.full((N,), 30.0)}
    config = {"environments": ["float32", "float64"], "reference": reference, **config}
    return KeyFile(method, config, inputs(0, N), F32.clone(),
                   extras={k: v for k, v in extras.items() if k not in drop})


def _suspect(boundary, natural=N):
    """Answers ``boundary`` on the key's samples and keeps the recorded label of the first ``natural`` sources."""
    sources = torch.where(torch.arange(N) < natural, SOURCE_LABELS, 9)
    return answering(torch.cat([boundary, sources]))


def test_the_reference_environment_passes():
    oracle = _suspect(F32)
    v = innformant.verify(oracle, _key())
    assert v.passed and v.decision == "float32" and v.statistic == 1.0 and v.flipped == []
    assert v.method == innformant.METHOD and v.statistic_name == "reference_match_rate"
    assert innformant.verify(oracle, _key()).queries == 2 * N  # its own queries, after the first verdict's
    assert v.details["consistent"] == ["float32"] and v.details["match_table"] == {"float32": 6, "float64": 5}
    assert v.queries == 2 * N and v.details["reference"] == "float32" and v.details["n"] == N


def test_another_environment_is_named_and_fails():
    v = innformant.verify(_suspect(F64), _key())
    assert not v.passed and v.decision == "float64" and v.statistic == pytest.approx(5 / 6) and v.flipped == [5]
    assert innformant.verify(_suspect(F64), _key(reference="float64")).passed


def test_environments_the_key_cannot_tell_apart_are_named_together():
    key = _key(torch.stack([F32, F32], dim=1))
    v = innformant.verify(_suspect(F32), key)
    assert v.decision == "float32 or float64" and v.passed
    assert innformant.identify(_suspect(F32), key) == (["float32", "float64"], {"float32": 6, "float64": 6})


@pytest.mark.parametrize("natural, decision", [(2, innformant.DIFFERENT_MODEL), (3, innformant.UNKNOWN),
                                               (6, innformant.UNKNOWN)])
def test_no_consistent_environment_is_a_different_model_when_fewer_than_half_the_sources_keep_their_label(
        natural, decision):
    answers = torch.tensor([0, 1, 2, 3, 9, 9])
    v = innformant.verify(_suspect(answers, natural), _key())
    assert v.decision == decision and not v.passed and v.details["consistent"] == []
    assert v.details["natural_agreement"] == pytest.approx(natural / N) and v.flipped == [4, 5]


def test_identify_asks_the_samples_once_and_counts_matches_per_environment():
    oracle = _suspect(torch.tensor([0, 1, 2, 9, 4, 6]))
    assert innformant.identify(oracle, _key()) == ([], {"float32": 4, "float64": 5})
    assert oracle.queries == N
    assert innformant.identify(_suspect(F64), _key()) == (["float64"], {"float32": 5, "float64": 6})


@pytest.mark.parametrize("key, match", [
    (lambda: _key(method="dbi"), "not an innformant key"),
    (lambda: _key(environments="float32"), "not an innformant key"),
    (lambda: _key(drop=("psnr",)), r"lacks the extra tensors \['psnr'\]"),
    (lambda: _key(drop=("env_labels",)), "lacks the extra tensors"),
    (lambda: _key(torch.stack([F32, F64], dim=1).int()), r"env_labels must be int64 of shape \(6, 2\)"),
    (lambda: _key(torch.stack([F32, F64, F64], dim=1)), "env_labels must be int64"),
    (lambda: _key(reference="float16"), "reference 'float16' is not one of"),
])
@pytest.mark.parametrize("ask", [innformant.identify, innformant.verify])
def test_malformed_keys_are_refused_before_asking(key, match, ask):
    oracle = _suspect(F32)
    with pytest.raises(KeyFileError, match=match):
        ask(oracle, key())
    assert oracle.queries == 0
