"""Preflight canaries: tampered copies reach their verdict, misdescribed endpoints and other models stop first."""

import pytest
import torch

from nnmark import marks
from nnmark.attacks import finetune, prune, quantize_int8
from nnmark.errors import ArgumentError, EndpointMismatch
from nnmark.keys import KeyFile
from nnmark.marks import canary
from nnmark.marks.integrity import dbi
from nnmark.oracles import HttpOracle, LabelsOracle, TorchOracle, TransformedOracle
from nnmark.serve import create_app, serving

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def key(lenet, mnist):
    oracle = TorchOracle(lenet, SHAPE)
    plain = dbi.create(oracle, mnist.train.x[:60], itr=200, eps=1e-3)
    return canary.attach(plain, oracle, mnist.test.x[:500], mnist.test.y[:500])


def test_attach_picks_confident_class_diverse_canaries(key, lenet):
    q, y, rows = (key.extras[n] for n in (canary.QUERIES, canary.LABELS, canary.PROBABILITIES))
    assert q.shape == (canary.CANARY_COUNT, *SHAPE) and len(set(y.tolist())) == canary.CANARY_COUNT
    assert (rows.max(1).values >= canary.MIN_CONFIDENCE).all() and torch.equal(rows.argmax(1), y)
    assert torch.equal(TorchOracle(lenet, SHAPE).labels(q), y)
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
    assert verdict.details["preflight"].startswith("preflight: ")
    assert verdict.decision == "tampered", verdict.statistic
    intact = marks.verify(TorchOracle(lenet, SHAPE), key)
    assert intact.decision == "intact"
    assert intact.details["preflight"] == "preflight: 8 of 8 canaries answered as the keyed model does"


def test_a_wrongly_normalised_endpoint_stops_before_a_verdict(key, lenet):
    # the server de-normalises what it gets (it expects (x - 0.1307) / 0.3081); the client sends pixels
    served = TransformedOracle(TorchOracle(lenet, SHAPE), lambda x: (x * 0.3081 + 0.1307).clamp(0, 1))
    with serving(create_app(served, model_name="m")) as url, HttpOracle(url, model_name="m") as oracle:
        with pytest.raises(EndpointMismatch, match=r"^endpoint .*: different model or wrong endpoint format; "
                                                   r"check --normalize"):
            marks.verify(oracle, key)


def test_canaries_catch_a_mis_normalised_label_only_endpoint(key, lenet):
    """Label-only answers carry no probability rows: the canaries are chosen so that the common misreadings relabel
    them (attacked copies still label them as the keyed model did: the test above, through labels only)."""
    assert "normalised with 0.5, 0.5... though not expected" in key.config["canaries_tell"]
    note = canary.preflight(LabelsOracle(TorchOracle(lenet, SHAPE)), key)
    assert f"they tell {len(key.config['canaries_tell'])} common misreadings" in note
    misread = LabelsOracle(TorchOracle(lenet, SHAPE).seen_through(lambda x: (x - 0.5) / 0.5))
    with pytest.raises(EndpointMismatch, match="canaries differently: different model or wrong endpoint format"):
        canary.preflight(misread, key)
    # MNIST's own normalisation relabels no confident natural image of this LeNet-5, but it does relabel the
    # key's fragile queries, to the labels the key's probes recorded
    assert "normalised with 0.1307, 0.3081... though not expected" in key.config["canaries_untold"]
    mnist_misread = LabelsOracle(TorchOracle(lenet, SHAPE).seen_through(lambda x: (x - 0.1307) / 0.3081))
    with pytest.raises(EndpointMismatch, match="when its inputs are normalised with 0.1307, 0.3081"):
        canary.preflight(mnist_misread, key)


def test_probabilities_taken_for_logits_give_flat_rows_and_stop(key, lenet):
    with serving(create_app(TorchOracle(lenet, SHAPE), model_name="m")) as url, \
            HttpOracle(url, model_name="m", output_name="probabilities", output_kind="logits") as oracle:
        with pytest.raises(EndpointMismatch, match=r"flat probability rows for 8 of 8 canaries .*--output-kind"):
            marks.verify(oracle, key)


def test_an_nhwc_endpoint_described_as_nchw_stops(lenet, mnist):
    class FirstChannel(torch.nn.Module):
        def forward(self, x):
            return lenet(x[:, :1])

    three = (3, 28, 28)
    pool = torch.cat([mnist.test.x[:300], 1 - mnist.test.x[:300], mnist.test.x[:300] / 2], dim=1)
    oracle = TorchOracle(FirstChannel(), three)
    key = canary.attach(dbi.create(oracle, pool[:6], itr=20, eps=1e-3), oracle, pool, mnist.test.y[:300])
    # the server reads the NCHW bytes it is sent as NHWC
    misread = TransformedOracle(oracle, lambda x: x.reshape(len(x), 28, 28, 3).permute(0, 3, 1, 2))
    with pytest.raises(EndpointMismatch, match="canaries differently: different model or wrong endpoint format"):
        marks.verify(misread, key)
    assert marks.verify(oracle, key).decision == "intact"


def test_another_model_is_named_and_keys_without_canaries_verify_with_a_note(key, lenet, mnist, constant_model):
    with pytest.raises(EndpointMismatch, match="answers 7 of 8 canaries differently: different model"):
        marks.verify(TorchOracle(constant_model(int(key.extras[canary.LABELS][0])), SHAPE), key)
    plain = dbi.create(TorchOracle(lenet, SHAPE), mnist.train.x[:4], itr=10, eps=1e-3)
    verdict = marks.verify(LabelsOracle(TorchOracle(lenet, SHAPE)), plain)
    assert verdict.details["preflight"] == canary.NO_CANARIES and verdict.decision == "intact"


def test_an_independent_model_passes_the_preflight_of_an_ownership_key(lenet, mnist):
    """A clean model must get NO MATCH from a fingerprint, not an endpoint error: only labels and flat rows count."""
    from nnmark import models

    other = models.build("lenet5", mnist.shape, mnist.num_classes)
    models.train(other, mnist.train, epochs=2, seed=7)
    key = canary.attach(KeyFile(method="ipguard", config={}, queries=mnist.test.x[:4],
                                expected=torch.zeros(4, dtype=torch.int64)),
                        TorchOracle(lenet, mnist.shape), mnist.test.x, mnist.test.y)
    assert canary.preflight(TorchOracle(other, mnist.shape), key, same_model=False).startswith("preflight:")
    with pytest.raises(EndpointMismatch, match="different model or wrong endpoint format"):
        canary.preflight(TorchOracle(other, mnist.shape), key)
