import pytest
import torch

from nnmark.attacks import finetune
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.marks.integrity import baselines, dbi
from nnmark.oracles import LabelsOracle, TorchOracle

ITR = 400


def test_variance_loss_extremes():
    uniform = torch.full((1, 10), 0.1)
    one_hot = torch.nn.functional.one_hot(torch.tensor([3]), 10).float()
    assert dbi.variance_loss(uniform).item() == pytest.approx(0.0, abs=1e-9)
    assert dbi.variance_loss(one_hot).item() == pytest.approx(0.81)
    assert dbi.expectation(one_hot).item() == pytest.approx(0.1)


def test_default_eps_follows_the_paper():
    assert dbi.default_eps((1, 28, 28)) == 1e-4
    assert dbi.default_eps((3, 32, 32)) == 1e-5


@pytest.fixture(scope="module")
def dbi_key(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    return dbi.create(oracle, mnist.train.x[:60], itr=ITR, eps=1e-3)


def test_fragile_samples_are_much_flatter_than_their_sources(lenet, mnist, dbi_key):
    oracle = TorchOracle(lenet, mnist.shape)
    before = dbi.variance_loss(oracle.probabilities(dbi_key.extras["sources"]))
    after = dbi.variance_loss(oracle.probabilities(dbi_key.queries))
    assert after.mean() < 0.2 * before.mean()
    assert oracle.probabilities(dbi_key.queries).max(1).values.mean() < 0.6
    assert dbi_key.queries.min() >= 0 and dbi_key.queries.max() <= 1
    assert torch.equal(dbi_key.expected, oracle.labels(dbi_key.queries))
    assert dbi_key.config["itr"] == ITR and dbi_key.config["direction"] == -1


def test_ascent_follows_the_printed_sign_and_sharpens(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    x = mnist.train.x[:10]
    sharper, loss = dbi.fragilize(oracle, x, 1e-3, 50, direction=+1)
    assert (loss >= dbi.variance_loss(oracle.probabilities(x)) - 1e-6).all()


def test_batched_generation_matches_one_at_a_time(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    x = mnist.train.x[:4]
    batched, _ = dbi.fragilize(oracle, x, 1e-3, 30)
    single = torch.cat([dbi.fragilize(oracle, x[i : i + 1], 1e-3, 30)[0] for i in range(4)])
    assert (batched - single).abs().max() <= 30 * 1e-3
    assert torch.equal(oracle.labels(batched), oracle.labels(single))


def test_tiny_finetune_flips_fragile_samples_but_few_natural_ones(lenet, mnist, dbi_key):
    oracle = TorchOracle(lenet, mnist.shape)
    natural = baselines.natural(oracle, natural_pool(mnist).x[:300])
    attack = attacker_data(mnist)
    suspect = LabelsOracle(TorchOracle(finetune(lenet, attack.x, attack.y, lr=1e-3, steps=20, seed=1), mnist.shape))
    fragile_verdict = dbi.verify(suspect, dbi_key)
    natural_verdict = baselines.verify(suspect, natural)
    assert fragile_verdict.decision == "tampered"
    assert fragile_verdict.statistic >= 0.3
    assert natural_verdict.statistic <= 0.02
    assert fragile_verdict.statistic > 5 * natural_verdict.statistic
    assert suspect.queries == 60 + 300
    assert dbi.verify(LabelsOracle(oracle), dbi_key).decision == "intact"
