"""The cross-environment rule of ``envs.check_environment`` on hand-made keys, tiny models and oracles (fast: no
training, mutation-tested). The rule its docstring states: a failed check of a fragile key whose numerics differ from
here is refused (``EnvironmentMismatch``, exit 2) unless the owner accepts the risk, or the model is a local torch
model that answers every query of the key alike, and clear of the numeric spread, in both environments; an endpoint,
a runtime other than torch and a key environment that cannot run here are always refused. Otherwise the verdict
stands, noting the difference; a key that records no environment gets no note."""

import copy

import pytest
import torch

from nnmark import envs, keys
from nnmark.errors import EnvironmentMismatch
from nnmark.keys import KeyFile
from nnmark.marks.integrity.common import verify_labels
from nnmark.marks.verdict import Verdict
from nnmark.oracles import EndpointOracle, LabelsOracle, Oracle, TorchOracle

SHAPE = (1, 2, 2)
FAILED = Verdict("natural", "tampered", False, "change_rate", 1.0)
PASSED = Verdict("natural", "intact", True, "change_rate", 0.0)


class ByDtype(torch.nn.Module):
    """Answers probabilities ``p32`` to float32 inputs and ``p64`` to float64 ones: its answers change with the
    environment alone."""

    def __init__(self, p32, p64):
        super().__init__()
        self.register_buffer("l32", torch.tensor(p32).log())
        self.register_buffer("l64", torch.tensor(p64).log())

    def forward(self, x):
        logits = self.l64 if x.dtype == torch.float64 else self.l32
        return logits.to(x.dtype).expand(len(x), -1) + 0 * x.flatten(1).sum(1, keepdim=True)


STEADY = ByDtype([0.6, 0.3, 0.1], [0.6, 0.3, 0.1])
"""Label 0 with a wide margin in both environments."""
MADE_IN = TorchOracle(STEADY, SHAPE).environment()
"""A float32 CPU record, as a key made here records it."""


def _key(record=MADE_IN, expected=(1, 1, 1)):
    config = {} if record is None else {keys.ENVIRONMENT: copy.deepcopy(record)}
    return KeyFile("natural", config, torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(0)),
                   torch.tensor(expected))


def _check(oracle, key, verdict=FAILED, **kwargs):
    return envs.check_environment(oracle, key, verdict, fragile=kwargs.pop("fragile", True), **kwargs)


def _float64(model=STEADY):
    return TorchOracle(model, SHAPE, dtype=torch.float64)


def _reverify(key):
    return lambda oracle: verify_labels(oracle, key)


def never(_oracle):
    raise AssertionError("the key was asked again where no second asking was due")


class Endpoint(EndpointOracle):
    """An endpoint oracle that is never asked: what ``check_environment`` sees of one."""

    def __init__(self, metadata=None):
        Oracle.__init__(self, SHAPE, 3)
        self.metadata = metadata


class OtherRuntime(Oracle):
    """An oracle that runs no torch model here (as ONNX Runtime or a worker does)."""


def test_a_key_that_records_no_environment_gets_no_note():
    assert _check(_float64(), _key(None)) is None
    key = _key(None)
    key.config[keys.ENVIRONMENT] = "float32 on cpu"  # KeyFile refuses it; check_environment ignores it
    assert _check(_float64(), key) is None


def test_the_same_environment_notes_nothing_even_for_a_failed_fragile_key():
    oracle = TorchOracle(STEADY, SHAPE)
    here = oracle.environment()
    assert _check(oracle, _key(), reverify=never) == {"key": MADE_IN, "here": here, "differs": {}, "others": {},
                                                      "accepted": False, "at_risk": None}


def test_what_cannot_be_chosen_here_is_reported_never_decisive():
    record = {**MADE_IN, "device_name": "elsewhere", "torch": "1.0", "threads": 999}
    oracle = TorchOracle(STEADY, SHAPE)
    here = oracle.environment()
    note = _check(oracle, _key(record), reverify=never)
    assert note["differs"] == {} and note["others"] == {
        "device_name": ["elsewhere", here["device_name"]], "torch": ["1.0", here["torch"]], "threads": [999, here[
            "threads"]]}


@pytest.mark.parametrize("verdict, fragile", [(PASSED, True), (FAILED, False)])
def test_a_passed_check_or_a_robust_key_stands_with_the_difference_noted(verdict, fragile):
    note = _check(_float64(ByDtype([0.6, 0.3, 0.1], [0.3, 0.6, 0.1])), _key(), verdict, fragile=fragile,
                  reverify=never)
    assert note["differs"] == {"dtype": ["float32", "float64"]} and note["accepted"] is False
    assert note["at_risk"] is None and note["here"]["dtype"] == "float64" and note["key"] == MADE_IN


def test_the_owner_may_accept_the_risk():
    note = _check(_float64(ByDtype([0.6, 0.3, 0.1], [0.3, 0.6, 0.1])), _key(), accept=True, reverify=never)
    assert note["accepted"] is True and note["at_risk"] is None and note["differs"] == {"dtype": ["float32", "float64"]}


@pytest.mark.parametrize("wrap", [lambda o: o, LabelsOracle], ids=["torch", "labels-only"])
def test_a_model_that_answers_alike_in_both_environments_keeps_its_failed_verdict(wrap):
    key = _key()
    note = _check(wrap(_float64()), key, reverify=_reverify(key))
    assert note["at_risk"] == 0 and note["accepted"] is False and note["differs"] == {"dtype": ["float32", "float64"]}


@pytest.mark.parametrize("wrap", [lambda o: o, LabelsOracle], ids=["torch", "labels-only"])
def test_a_failed_fragile_key_the_environment_alone_flips_is_refused(wrap):
    key = _key(expected=(0, 0, 0))
    flipping = ByDtype([0.6, 0.3, 0.1], [0.3, 0.6, 0.1])
    with pytest.raises(EnvironmentMismatch) as e:
        _check(wrap(_float64(flipping)), key, reverify=_reverify(key))
    assert str(e.value) == (
        "the natural key was made in another environment (dtype float32 -> float64): 3 of its 3 queries answer "
        "differently, or lie within the numeric spread, there; a fragile key can fail there with no change of the "
        "model, so no verdict is given: verify with --device cpu --env float32, or pass --accept-environment to "
        "accept the risk")


def test_a_query_within_the_spread_is_at_risk():
    """Margin 0.05 (0.40 - 0.35), spread 0.03: 0.05 <= 2 x 0.03, at risk; spread 0.02: 0.05 > 0.04, the verdict
    stands."""
    key = _key(expected=(0, 0, 0))
    with pytest.raises(EnvironmentMismatch, match="3 of its 3 queries"):
        _check(_float64(ByDtype([0.35, 0.40, 0.25], [0.32, 0.40, 0.28])), key, reverify=_reverify(key))
    assert _check(_float64(ByDtype([0.35, 0.40, 0.25], [0.33, 0.40, 0.27])), key, reverify=_reverify(key))[
        "at_risk"] == 0


def test_without_a_second_asking_a_failed_fragile_key_in_another_environment_is_refused():
    with pytest.raises(EnvironmentMismatch, match=r"\(dtype float32 -> float64\): the key's environment \(device cpu\) "
                                                  "cannot run here; a fragile key"):
        _check(_float64(), _key())


def test_a_key_environment_that_cannot_run_here_is_refused():
    record = {**MADE_IN, "dtype": "float8"}
    key = _key(record)
    with pytest.raises(EnvironmentMismatch, match=r"dtype float8 -> float32\): the key's environment \(device cpu\) "
                                                  r"cannot run here.*in the environment the key records \(device cpu, "
                                                  "dtype float8, mkldnn"):
        _check(TorchOracle(STEADY, SHAPE), key, reverify=_reverify(key))


@pytest.mark.parametrize("metadata", [None, {}, {"parameters": "cpu"}, {"parameters": {"environment": "cpu"}},
                                      {"parameters": {"environment": envs.DEFAULT_RECORD}}])
def test_an_endpoint_is_taken_to_run_on_the_cpu_in_float32(metadata):
    endpoint = Endpoint(metadata)
    note = _check(endpoint, _key(), reverify=never)
    assert note == {"key": MADE_IN, "here": None, "differs": {}, "others": {}, "accepted": False, "at_risk": None}
    record = {**MADE_IN, "dtype": "float64"}
    with pytest.raises(EnvironmentMismatch, match=r"\(dtype float64 -> float32\): an endpoint is taken to run on the "
                                                  "CPU in float32 and cannot be asked in the key's environment; "):
        _check(endpoint, _key(record), reverify=never)
    assert _check(endpoint, _key(record), accept=True)["accepted"] is True


def test_what_an_endpoint_publishes_adds_a_difference_never_removes_one():
    published = {**envs.DEFAULT_RECORD, "batch_size": 1}
    note = _check(Endpoint({"parameters": {"environment": published}}), _key(), PASSED)
    assert note["differs"] == {"batch_size": [None, 1]}
    gpu = {**MADE_IN, "device": "cuda"}
    note = _check(Endpoint({"parameters": {"environment": {**gpu, "batch_size": 1}}}), _key(gpu), PASSED)
    assert set(note["differs"]) >= {"device", "batch_size"} and note["differs"]["device"][0] == "cuda"


def test_a_runtime_other_than_torch_always_differs_and_is_refused():
    other = OtherRuntime(SHAPE, 3)
    note = _check(other, _key(), PASSED)
    assert note == {"key": MADE_IN, "here": None, "differs": {"runtime": ["torch", "OtherRuntime"]}, "others": {},
                    "accepted": False, "at_risk": None}
    with pytest.raises(EnvironmentMismatch, match=r"\(runtime torch -> OtherRuntime\): OtherRuntime cannot be asked "
                                                  "the key beside the key's environment; "):
        _check(other, _key(), reverify=never)
