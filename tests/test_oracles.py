import pytest
import torch

from nnmark import envs
from nnmark.errors import AccessError, InputError, QueryBudgetExceeded
from nnmark.oracles import LabelsOracle, ProbabilitiesOracle, TorchOracle


@pytest.fixture
def oracle(lenet):
    return TorchOracle(lenet, (1, 28, 28))


def test_labels_probabilities_agree_and_are_counted(oracle, mnist):
    x = mnist.test.x[:50]
    p = oracle.probabilities(x)
    assert p.shape == (50, 10) and p.dtype == torch.float32
    assert torch.allclose(p.sum(1), torch.ones(50), atol=1e-5)
    assert torch.equal(oracle.labels(x), p.argmax(1))
    assert oracle.queries == 100
    assert oracle.num_classes == 10


def test_budget_refuses_whole_call_and_keeps_count(lenet, mnist):
    o = TorchOracle(lenet, (1, 28, 28), budget=30)
    o.labels(mnist.test.x[:20])
    with pytest.raises(QueryBudgetExceeded):
        o.labels(mnist.test.x[:11])
    assert o.queries == 20
    o.labels(mnist.test.x[:10])
    assert o.queries == 30


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(2, 28, 28),
        torch.rand(2, 3, 28, 28),
        torch.full((2, 1, 28, 28), float("nan")),
        torch.full((2, 1, 28, 28), 1.5),
        torch.full((2, 1, 28, 28), -0.1),
        torch.zeros(2, 1, 28, 28, dtype=torch.int64),
        torch.zeros(0, 1, 28, 28),
    ],
)
def test_bad_inputs_are_refused_before_counting(oracle, bad):
    with pytest.raises(InputError):
        oracle.labels(bad)
    assert oracle.queries == 0


def test_gradient_matches_finite_differences(oracle, mnist):
    # interior points (a +-h step stays in [0, 1]), jittered so no max-pool window has a tie
    x = 0.25 + 0.5 * mnist.test.x[:3] + 0.01 * torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    value, grad = oracle.gradient(lambda z: z[:, 3], x, on="logits")
    assert value.shape == (3,) and grad.shape == x.shape
    d = grad / grad.flatten(1).norm(dim=1)[:, None, None, None]
    model64 = TorchOracle(oracle.model, (1, 28, 28), dtype=torch.float64)
    h = 1e-6  # ReLU nets are piecewise linear: a short step rarely crosses a kink
    x64, d64 = x.double(), d.double()
    fd = (model64.logits(x64 + h * d64)[:, 3] - model64.logits(x64 - h * d64)[:, 3]) / (2 * h)
    analytic = grad.flatten(1).norm(dim=1).double()  # derivative along d is |grad|
    assert torch.allclose(value.double(), model64.logits(x)[:, 3], atol=1e-4)
    assert torch.allclose(fd, analytic, rtol=1e-2)


def test_gradient_is_per_sample(oracle, mnist):
    x = mnist.test.x[:4]
    _, g_all = oracle.gradient(lambda p: p.max(1).values, x)
    _, g_one = oracle.gradient(lambda p: p.max(1).values, x[2:3])
    assert torch.allclose(g_all[2:3], g_one, atol=1e-6)


def test_wrappers_restrict_access_and_budget(oracle, mnist):
    x = mnist.test.x[:5]
    probs = ProbabilitiesOracle(oracle, budget=10)
    assert torch.equal(probs.probabilities(x), oracle.probabilities(x))
    with pytest.raises(AccessError):
        probs.gradient(lambda p: p[:, 0], x)
    with pytest.raises(QueryBudgetExceeded):
        probs.labels(torch.cat([x, x]))
    labels = LabelsOracle(probs)
    assert torch.equal(labels.labels(x), oracle.labels(x))
    with pytest.raises(AccessError):
        labels.probabilities(x)
    with pytest.raises(AccessError):
        ProbabilitiesOracle(labels)
    assert labels.queries == 5 and probs.queries == 10


def test_environments_answer_natural_images_alike_and_leave_model_alone(lenet, mnist):
    x = mnist.test.x[:200]
    reference = TorchOracle(lenet, (1, 28, 28)).labels(x)
    for name, env in envs.ENVIRONMENTS.items():
        assert torch.equal(env.oracle(lenet, (1, 28, 28)).labels(x), reference), name
    assert next(lenet.parameters()).dtype == torch.float32


def test_logits_are_counted_and_budgeted_and_only_models_give_them(lenet, mnist):
    x = mnist.test.x[:4]
    with TorchOracle(lenet, mnist.shape, budget=6) as oracle:
        assert oracle.logits(x).shape == (4, 10) and oracle.queries == 4
        with pytest.raises(QueryBudgetExceeded):
            oracle.logits(x)
    with pytest.raises(AccessError, match="no logits"):
        ProbabilitiesOracle(TorchOracle(lenet, mnist.shape)).logits(x)


def test_every_oracle_closes_as_a_context_manager(lenet, mnist):
    closed = []

    class Tracked(LabelsOracle):
        def close(self):
            closed.append(True)

    with Tracked(TorchOracle(lenet, mnist.shape)) as oracle:
        oracle.labels(mnist.test.x[:2])
    assert closed == [True]
