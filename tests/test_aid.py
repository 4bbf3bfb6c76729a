import pytest
import torch
from torch import nn

import foreign_models
from nnmark import data, models
from nnmark.attacks import weight_noise
from nnmark.data.roles import natural_pool
from nnmark.errors import AccessError, InputError, ModelError
from nnmark.marks.integrity import aid, baselines
from nnmark.models import ModelCard
from nnmark.oracles import LabelsOracle, ProbabilitiesOracle, TorchOracle

ITR = 200


def test_boundary_gap_is_the_top2_logit_gap():
    z = torch.tensor([[1.0, 5.0, 3.0], [2.0, 2.0, -1.0]])
    assert aid.boundary_gap(z).tolist() == [2.0, 0.0]


def test_coverage_and_its_hinge_on_known_activations():
    pre = [torch.tensor([[1.0, -2.0], [3.0, 4.0]]), torch.tensor([[-1.0, -1.0, -1.0, 2.0], [0.5, 0.5, 0.5, 0.5]])]
    assert aid.neuron_coverage(pre).tolist() == pytest.approx([(0.5 + 0.25) / 2, 1.0])
    assert aid.coverage_loss(pre).tolist() == pytest.approx([(1.0 + 0.75) / 2, 0.0])
    assert aid.neuron_coverage(pre, threshold=1.0).tolist() == pytest.approx([(0.0 + 0.25) / 2, (1.0 + 0.0) / 2])
    logits = torch.tensor([[3.0, 1.0], [0.0, 0.0]])
    assert aid.edge_loss(logits, pre, beta=2.0).tolist() == pytest.approx([2.0 + 1.75, 0.0])


def test_hooks_see_every_relu_input_and_leave_the_model_clean(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    with oracle.module_inputs(torch.nn.ReLU) as hidden:
        oracle.labels(mnist.train.x[:3])
        pre = hidden.take()
    assert [a.shape[1] for a in pre] == [6 * 28 * 28, 16 * 10 * 10, 120, 84]
    assert all(a.shape[0] == 3 for a in pre) and (torch.cat(pre, 1) < 0).any()
    assert all(not m._forward_pre_hooks for m in lenet.modules())


@pytest.fixture(scope="module")
def aid_key(lenet, mnist):
    return aid.create(TorchOracle(lenet, mnist.shape), mnist.train.x[:48], itr=ITR)


def test_coverage_rises_and_samples_end_near_the_boundary(lenet, mnist, aid_key):
    c = aid_key.config
    assert c["coverage_end"] > c["coverage_start"] + 0.03
    start = aid.boundary_gap(TorchOracle(lenet, mnist.shape).logits(aid_key.extras["sources"]))
    assert aid_key.extras["gap"].median() < 0.05 * start.median()
    assert c["gap_end"] < 0.05 * c["gap_start"]
    # the coverage term matters: without it (beta = 0) coverage rises less
    plain = aid.create(TorchOracle(lenet, mnist.shape), mnist.train.x[:48], itr=ITR, beta=0.0)
    assert c["coverage_end"] > plain.config["coverage_end"] + 0.01


def test_key_is_well_formed_and_verifies_intact(lenet, mnist, aid_key):
    oracle = TorchOracle(lenet, mnist.shape)
    assert aid_key.method == "aid" and len(aid_key.queries) == 48
    assert 0 <= aid_key.queries.min() and aid_key.queries.max() <= 1
    assert torch.equal(aid_key.expected, oracle.labels(aid_key.queries))
    v = aid.verify(LabelsOracle(oracle), aid_key)
    assert v.decision == "intact" and v.statistic == 0 and v.queries == 48


def test_weight_perturbation_flips_edge_points_but_few_natural_samples(lenet, mnist, aid_key):
    suspect = TorchOracle(weight_noise(lenet, 1e-3, seed=1), mnist.shape)
    v = aid.verify(LabelsOracle(suspect), aid_key)
    assert v.decision == "tampered" and v.statistic >= 0.1
    assert aid.verify(ProbabilitiesOracle(suspect), aid_key).flipped == v.flipped
    natural = baselines.natural(TorchOracle(lenet, mnist.shape), natural_pool(mnist).x[:300])
    assert aid.verify(suspect, natural).statistic < v.statistic / 5


def test_bad_input_raises(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    x = mnist.train.x[:2]
    with pytest.raises(AccessError):
        aid.create(ProbabilitiesOracle(oracle), x, itr=1)
    with pytest.raises(InputError):
        aid.create(oracle, x.clone().fill_(float("nan")), itr=1)
    with pytest.raises(InputError):
        aid.create(oracle, x + 1.0, itr=1)
    with pytest.raises(InputError):
        aid.create(oracle, x[:, :, :10], itr=1)
    with pytest.raises(ValueError):
        aid.create(oracle, x, itr=1, lr=0.0)
    with pytest.raises(ValueError):
        aid.create(oracle, x, itr=-1)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with pytest.raises(ModelError):
        aid.create(TorchOracle(linear, mnist.shape), x, itr=1)


def test_a_gelu_model_is_keyed_through_its_activation_modules():
    card = ModelCard(foreign_models.INPUT_SHAPE, foreign_models.NUM_CLASSES)
    ds = data.load_for("digits", card)
    torch.manual_seed(0)
    net = models.train(foreign_models.small_gn_net(), ds.train, epochs=1, lr=3e-3)  # GroupNorm + GELU, no ReLU
    oracle = TorchOracle(net, card.input_shape)
    with oracle.module_inputs(aid.ACTIVATIONS) as hidden:
        oracle.logits(ds.test.x[:3])
        assert len(hidden.modules) == 2 and [t.shape[0] for t in hidden.take()] == [3, 3]
    key = aid.create(oracle, ds.train.x[:8], itr=ITR)
    assert key.config["coverage_end"] > key.config["coverage_start"]
    assert aid.verify(LabelsOracle(oracle), key).passed
