"""IPGuard (Cao et al.): the boundary loss, points at the boundary, and the matching rate in miniature on 8x8 digits."""

import pytest
import torch

from nnmark import data, keys, models
from nnmark.attacks import finetune_mode
from nnmark.data.roles import attacker_data
from nnmark.errors import AccessError, InputError, KeyFileError
from nnmark.marks.ownership import ipguard
from nnmark.oracles import LabelsOracle, TorchOracle


def test_boundary_loss_is_zero_only_when_i_leads_runner_up_j_by_k():
    g = torch.tensor([[5.0, 2.0, 0.0], [5.0, 4.5, 0.0], [1.0, 2.0, 3.0], [5.0, 0.0, 2.0]])
    i, j = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    loss = ipguard.boundary_loss(g, i, j, 1.0)
    # leads by 3 >= k, j runner-up: 0; leads by 0.5 < k: 0.5; j behind i by -1 and behind t=2 by 1: (1+1) + 1;
    # i leads j by 5 but a third class beats j by 2: 2
    assert loss.tolist() == pytest.approx([0.0, 0.5, 3.0, 2.0])
    assert ipguard.boundary_loss(g, i, j, 0.0)[1].item() == 0.0  # k = 0: any lead of i will do
    # swapping the roles of i and j makes the satisfied point costly
    assert ipguard.boundary_loss(g[:1], j[:1], i[:1], 1.0).item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        ipguard.boundary_loss(g, i, i, 1.0)
    with pytest.raises(ValueError):
        ipguard.boundary_loss(g[:, :2], i, j, 1.0)


def test_a_descent_step_on_the_loss_moves_logits_toward_the_target_order():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5))
    x = torch.rand(16, 1, 2, 2)
    i, j = ipguard.draw_pairs(16, 5, torch.Generator().manual_seed(0))
    loss, grad = TorchOracle(net, (1, 2, 2)).gradient(lambda g: ipguard.boundary_loss(g, i, j, 0.5), x, on="logits")
    after = ipguard.boundary_loss(net(x - 0.01 * grad), i, j, 0.5)
    assert after.sum() < loss.sum()


def test_draw_pairs_is_seeded_and_never_pairs_a_class_with_itself():
    i, j = ipguard.draw_pairs(2000, 10, torch.Generator().manual_seed(3))
    i2, j2 = ipguard.draw_pairs(2000, 10, torch.Generator().manual_seed(3))
    assert torch.equal(i, i2) and torch.equal(j, j2)
    assert not (i == j).any() and set(i.tolist()) == set(range(10)) == set(j.tolist())


@pytest.fixture(scope="module")
def world():
    """Source, an FTAL copy and an independent LeNet-5 on 8x8 digits (~2 s each), and a key from 60 training images."""
    ds = data.load("digits")

    def trained(seed):
        torch.manual_seed(seed)
        return models.train(models.build("lenet5", ds.shape, ds.num_classes), ds.train, epochs=8, seed=seed)

    source = trained(0)
    att = attacker_data(ds)
    suspects = {"source": source, "FTAL": finetune_mode(source, att.x, att.y, mode="FTAL", seed=1),
                "independent": trained(1)}
    key = ipguard.create(TorchOracle(source, ds.shape), ds.train.x[:60], seed=0, meta={"data": "digits"})
    return ds, key, suspects


def test_points_end_near_the_boundary_with_the_intended_label(world):
    ds, key, suspects = world
    c = key.config
    assert key.method == "ipguard" and c["converged"] >= 40 and c["n"] == len(key.expected) == c["converged"]
    assert (c["k"], c["lr"], c["threshold"], c["p0"], c["data"]) == (3.0, 0.01, 0.75, 0.1, "digits")
    assert key.queries.min() >= 0 and key.queries.max() <= 1 and not torch.equal(key.queries, key.extras["sources"])
    with torch.no_grad():
        g, g0 = suspects["source"](key.queries), suspects["source"](key.extras["sources"])
    rows = torch.arange(len(g))
    top2 = g.topk(2, dim=1)
    assert torch.equal(top2.indices[:, 0], key.expected)  # the intended label i ...
    assert torch.equal(top2.indices[:, 1], key.extras["runner_up"])  # ... with the drawn j as runner-up
    gap = g[rows, key.expected] - g[rows, key.extras["runner_up"]]
    assert (gap >= 3.0 - 1e-4).all() and gap.median() < 3.5  # frozen about k from the i/j boundary
    assert (g0.argmax(dim=1) != key.expected).float().mean() > 0.5  # most started in another class


def test_key_matches_the_source_and_a_finetuned_copy_more_than_an_independent_model(world):
    ds, key, suspects = world
    v = {name: ipguard.verify(LabelsOracle(TorchOracle(m, ds.shape)), key) for name, m in suspects.items()}
    print({n: (x.decision, round(x.statistic, 3), x.details["p_value"]) for n, x in v.items()})
    assert v["source"].passed and v["source"].statistic == 1.0 and not v["source"].flipped
    assert v["FTAL"].passed and v["FTAL"].statistic >= 0.85
    assert not v["independent"].passed and v["independent"].statistic < v["FTAL"].statistic - 0.25
    assert v["FTAL"].details["p_value"] < 1e-20
    for x in v.values():
        assert x.statistic_name == "matching_rate" and x.queries == len(key.expected)
        assert len(x.flipped) == x.details["n"] - x.details["hits"]


def test_key_is_deterministic_by_seed_and_survives_signing(world, tmp_path):
    ds, key, suspects = world
    again = ipguard.create(TorchOracle(suspects["source"], ds.shape), ds.train.x[:60], seed=0, meta={"data": "digits"})
    assert torch.equal(again.queries, key.queries) and torch.equal(again.expected, key.expected)
    other = ipguard.create(TorchOracle(suspects["source"], ds.shape), ds.train.x[:60], seed=1, iterations=50)
    assert not torch.equal(other.extras["runner_up"][:5], key.extras["runner_up"][:5])
    keys.save(key, tmp_path / "ipg.key", secret=b"s3cret")
    loaded = keys.load(tmp_path / "ipg.key", secret=b"s3cret")
    assert loaded.config == key.config and ipguard.verify(LabelsOracle(TorchOracle(suspects["FTAL"], ds.shape)),
                                                          loaded).passed


def test_bad_inputs_raise_clear_errors(world):
    ds, key, suspects = world
    oracle = TorchOracle(suspects["source"], ds.shape)
    bad = ds.train.x[:4].clone()
    bad[0, 0, 0, 0] = 1.5
    with pytest.raises(InputError):
        ipguard.create(oracle, bad)
    with pytest.raises(InputError):
        ipguard.create(oracle, torch.full((2, *ds.shape), float("nan")))
    with pytest.raises(InputError):
        ipguard.create(oracle, ds.train.x[0])
    with pytest.raises(AccessError):
        ipguard.create(LabelsOracle(oracle), ds.train.x[:4])
    for kwargs in ({"n": 0}, {"k": -1.0}, {"lr": 0.0}, {"threshold": 1.5}, {"p0": -0.1}):
        with pytest.raises(ValueError):
            ipguard.create(oracle, ds.train.x[:4], iterations=2, **kwargs)
    with pytest.raises(ValueError):
        ipguard.create(oracle, ds.train.x[:4], iterations=2, meta={"k": 1})
    suspect = LabelsOracle(oracle)
    with pytest.raises(KeyFileError):
        ipguard.verify(suspect, keys.KeyFile("dbi", key.config, key.queries, key.expected))
    no_threshold = {k: v for k, v in key.config.items() if k != "threshold"}
    with pytest.raises(KeyFileError):
        ipguard.verify(suspect, keys.KeyFile("ipguard", no_threshold, key.queries, key.expected))
    with pytest.raises(KeyFileError):
        ipguard.verify(suspect, keys.KeyFile("ipguard", {**key.config, "p0": 2.0}, key.queries, key.expected))
