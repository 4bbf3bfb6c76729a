"""Preflight canaries: each known misreading is named, tampered and other models reach their verdict."""

import re

import pytest
import torch

from nnmark import marks
from nnmark.attacks import finetune, prune, quantize_int8
from nnmark.errors import ArgumentError, EndpointMismatch
from nnmark.keys import KeyFile
from nnmark.marks import canary
from nnmark.marks.integrity import dbi
from nnmark.oracles import LabelsOracle, TorchOracle

SHAPE = (1, 28, 28)
THREE = (3, 28, 28)
DIFFERS = "preflight: the canaries fit no known reading of the keyed model"


@pytest.fixture(scope="module")
def key(lenet, mnist):
    oracle = TorchOracle(lenet, SHAPE)
    plain = dbi.create(oracle, mnist.train.x[:60], itr=200, eps=1e-3)
    return canary.attach(plain, oracle, mnist.test.x[:500], mnist.test.y[:500])


class FirstChannel(torch.nn.Module):
    """A 3-channel model: the LeNet-5 on the first channel."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x[:, :1])


@pytest.fixture(scope="module")
def three(lenet, mnist):
    """(3-channel oracle, its key): channels the digit, its negative and half of it."""
    x = mnist.test.x[:300]
    pool = torch.cat([x, 1 - x, x / 2], dim=1)
    oracle = TorchOracle(FirstChannel(lenet), THREE)
    return oracle, canary.attach(dbi.create(oracle, pool[:6], itr=20, eps=1e-3), oracle, pool, mnist.test.y[:300])


def test_attach_picks_confident_canaries_and_keeps_the_misread_answers(key, lenet):
    q, y, rows = (key.extras[n] for n in (canary.QUERIES, canary.LABELS, canary.PROBABILITIES))
    assert q.shape == (canary.CANARY_COUNT, *SHAPE) and len(set(y.tolist())) == canary.CANARY_COUNT
    assert (rows.max(1).values >= canary.MIN_CONFIDENCE).all() and torch.equal(rows.argmax(1), y)
    assert torch.equal(TorchOracle(lenet, SHAPE).labels(q), y)
    names = key.config["canary_readings"]
    assert names == list(canary.misreadings(1))
    assert key.extras[canary.READINGS].shape == (len(q), len(names), 10)
    i = names.index("normalised_05")
    seen = TorchOracle(lenet, SHAPE).seen_through(lambda x: (x - 0.5) / 0.5).probabilities(q)
    assert torch.equal(key.extras[canary.READINGS][:, i], seen)
    with pytest.raises(ArgumentError, match="give a larger pool"):
        canary.attach(key, TorchOracle(lenet, SHAPE), key.extras[canary.QUERIES][:2], key.extras[canary.LABELS][:2])


@pytest.mark.parametrize("attack", ["finetune", "prune", "quantize"])
def test_tampered_copies_pass_preflight_and_reach_tampered(key, lenet, mnist, attack):
    attacked = {
        "finetune": lambda: finetune(lenet, mnist.train.x[1000:1500], mnist.train.y[1000:1500], lr=1e-4, steps=100),
        "prune": lambda: prune(lenet, 0.3),
        "quantize": lambda: quantize_int8(lenet),
    }[attack]()
    verdict = marks.verify(LabelsOracle(TorchOracle(attacked, SHAPE)), key)
    assert verdict.details["preflight"].startswith("preflight: 8 of 8 canaries answered as the keyed model does")
    assert verdict.decision == "tampered", verdict.statistic
    assert canary.preflight(TorchOracle(attacked, SHAPE), key, endpoint=True).startswith("preflight: 8 of 8")
    intact = marks.verify(TorchOracle(lenet, SHAPE), key)
    assert intact.decision == "intact"
    assert intact.details["preflight"] == "preflight: 8 of 8 canaries answered as the keyed model does"


def _misread_oracle(oracle: TorchOracle, name: str) -> TorchOracle:
    """The keyed model as an endpoint misread ``name`` answers."""
    if name == canary.SOFTMAX_TWICE:
        class Twice(torch.nn.Module):
            def forward(self, x):
                return torch.softmax(oracle.model(x).double(), dim=1)
        return TorchOracle(Twice(), oracle.input_shape)
    return oracle.seen_through(canary.misreadings(oracle.input_shape[0])[name].transform)


@pytest.mark.parametrize("channels, name", [
    *((1, name) for name in canary.misreadings(1)), (1, canary.SOFTMAX_TWICE),
    *((3, name) for name in ("normalised_imagenet", "unnormalised_imagenet", "nchw_as_nhwc", "nhwc_as_nchw")),
])
def test_each_misreading_is_named_with_its_flag_on_an_endpoint_and_noted_on_a_local_model(key, lenet, three,
                                                                                          channels, name):
    oracle, k = (TorchOracle(lenet, SHAPE), key) if channels == 1 else three
    misread = canary.described(name, channels)
    with pytest.raises(EndpointMismatch, match=r"^endpoint answers as the keyed model does when ") as e:
        canary.preflight(_misread_oracle(oracle, name), k, endpoint=True)
    assert misread.words in str(e.value) and f"check {misread.flag}" in str(e.value)
    note = canary.preflight(_misread_oracle(oracle, name), k)  # a local model: its verdict stands
    assert misread.words in note and "its verdict stands" in note
    assert canary.preflight(oracle, k, endpoint=True) == "preflight: 8 of 8 canaries answered as the keyed model does"


def test_misreadings_that_look_alike_are_named_together(key, lenet):
    """Where two misreadings give the same answers (both saturate a model), the canaries cannot tell which: both."""
    names = key.config["canary_readings"]
    rows = key.extras[canary.READINGS].clone()
    rows[:, names.index("scaled_up_255")] = rows[:, names.index("normalised_mnist")]
    alike = KeyFile(key.method, key.config, key.queries, key.expected, extras={**key.extras, canary.READINGS: rows})
    with pytest.raises(EndpointMismatch) as e:
        canary.preflight(_misread_oracle(TorchOracle(lenet, SHAPE), "normalised_mnist"), alike, endpoint=True)
    assert str(e.value).count(", or when ") == 1 and str(e.value).endswith("check --input-dtype / --normalize")


@pytest.mark.parametrize("which", ["independent", "random", "heavy fine-tune"])
def test_models_that_fit_no_reading_get_their_verdict(key, changed_models, which):
    model = TorchOracle(changed_models[which], SHAPE)
    note = canary.preflight(model, key, endpoint=True)
    assert note.startswith(DIFFERS) and note.endswith("an endpoint format nnmark does not know would look the same")
    verdict = marks.verify(model, key)
    assert verdict.decision == "tampered" and verdict.details["preflight"].startswith(DIFFERS)
    assert not verdict.details["preflight"].endswith("look the same")  # a local model has no endpoint format
    assert marks.verify(LabelsOracle(model), key).decision == "tampered"


def test_a_label_only_endpoint_is_judged_on_told_canaries_and_probes(key, lenet):
    """Label-only answers carry no rows: misreadings that relabel most canaries are told by them (canaries are
    chosen so), the others by the key's own fragile queries kept as probes."""
    oracle = TorchOracle(lenet, SHAPE)
    tell, untold = key.config["canaries_tell"], key.config["canaries_untold"]
    assert tell and untold and set(tell) | set(untold) == set(canary.misreadings(1))
    note = canary.preflight(LabelsOracle(oracle), key, endpoint=True)
    assert note.endswith(f"(labels only: they tell {len(tell)} common misreadings)")
    for name in tell + untold:
        with pytest.raises(EndpointMismatch, match=re.escape(canary.described(name, 1).words)):
            canary.preflight(LabelsOracle(_misread_oracle(oracle, name)), key, endpoint=True)


def test_probes_kept_by_a_misreading_tell_it_from_a_change_that_flips_everything(key, lenet):
    """A label-only model that answers a probe's misread label everywhere matches the relabelled probes but
    not the kept ones."""
    untold = key.config["canaries_untold"][0]
    index = key.extras[canary.PROBE_INDEX]
    misread = key.extras[canary.PROBE_LABELS][0]
    moved = misread != key.expected[index]
    assert 0 < int(moved.sum()) < len(index)

    class Replay(torch.nn.Module):
        """Answers the misread label on every probe (and the keyed model elsewhere)."""

        def forward(self, x):
            z = lenet(x)
            for q, label in zip(key.queries[index], misread):
                hit = (x == q).flatten(1).all(1)
                z[hit] = torch.nn.functional.one_hot(label, 10).float() * 50
            return z

    replay = LabelsOracle(TorchOracle(Replay(), SHAPE))
    with pytest.raises(EndpointMismatch, match=re.escape(canary.described(untold, 1).words)):
        canary.preflight(replay, key, endpoint=True)
    key_flipped = KeyFile(key.method, key.config, key.queries, key.expected,
                          extras={**key.extras, canary.PROBE_LABELS: key.extras[canary.PROBE_LABELS].clone()})
    key_flipped.extras[canary.PROBE_LABELS][0][~moved] = (key.expected[index][~moved] + 1) % 10
    assert canary.preflight(replay, key_flipped, endpoint=True).startswith("preflight: 8 of 8")


def test_keys_without_misread_answers_fall_back_to_the_earlier_rule(key, changed_models, lenet, mnist):
    """A key of an earlier release (canaries, no readings): an endpoint that fits no reading still stops, as
    nothing tells a misreading from a change; a local model gets its verdict."""
    old = KeyFile(key.method, {k: v for k, v in key.config.items() if k != "canary_readings"}, key.queries,
                  key.expected, extras={k: v for k, v in key.extras.items() if k != canary.READINGS})
    other = TorchOracle(changed_models["independent"], SHAPE)
    with pytest.raises(EndpointMismatch, match=r"different model or wrong endpoint format \(this key keeps no"):
        canary.preflight(other, old, endpoint=True)
    assert marks.verify(other, old).details["preflight"].startswith(DIFFERS)
    with pytest.raises(EndpointMismatch, match="read as logits"):  # computed from the keyed rows
        canary.preflight(_misread_oracle(TorchOracle(lenet, SHAPE), canary.SOFTMAX_TWICE), old, endpoint=True)
    plain = dbi.create(TorchOracle(lenet, SHAPE), mnist.train.x[:4], itr=10, eps=1e-3)
    verdict = marks.verify(LabelsOracle(TorchOracle(lenet, SHAPE)), plain)
    assert verdict.details["preflight"] == canary.NO_CANARIES and verdict.decision == "intact"


def test_an_independent_model_gets_no_match_not_an_error_for_an_ownership_key(lenet, mnist, changed_models):
    key = canary.attach(KeyFile(method="ipguard", config={}, queries=mnist.test.x[:4],
                                expected=torch.zeros(4, dtype=torch.int64)),
                        TorchOracle(lenet, mnist.shape), mnist.test.x, mnist.test.y)
    assert canary.preflight(TorchOracle(changed_models["independent"], SHAPE), key, endpoint=True).startswith(DIFFERS)


def test_the_fit_bounds_are_inclusive_and_the_told_bounds_strict():
    """The decision's comparisons, at their boundaries (8 canaries: 2 may differ)."""
    fit = canary._Fit
    assert fit(2, canary.MAX_LOG_SHIFT).fits(8)
    assert not fit(3, 0.0).fits(8) and not fit(0, canary.MAX_LOG_SHIFT + 1e-9).fits(8)
    assert fit(0, 0.1).rank() < fit(0, 0.2).rank() and fit(1, 0.1).rank() > fit(0, 0.1).rank()
    labels = torch.arange(8) % 10
    rows = torch.nn.functional.one_hot(labels, 10).double() * 0.9 + 0.01
    relabel = lambda k: torch.nn.functional.one_hot((labels + (torch.arange(8) < k)) % 10, 10).double() * 0.9 + 0.01
    assert not canary._told(relabel(4), None, labels) and canary._told(relabel(5), None, labels)
    boundary = rows * torch.exp(torch.tensor(2 * canary.MAX_LOG_SHIFT))
    assert not canary._told(boundary, rows, labels) and canary._told(boundary * 1.001, rows, labels)
