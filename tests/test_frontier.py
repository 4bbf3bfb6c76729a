"""Frontier stitching (Le Merrer et al.): FGSM key of true and false adversaries, fine-tuned in, binomial decision."""

import pytest
import torch

from nnmark import data, models
from nnmark.data.roles import natural_pool
from nnmark.errors import AccessError, DataError, KeyFileError, QueryBudgetExceeded
from nnmark.keys import KeyFile
from nnmark.marks.ownership import frontier
from nnmark.marks.ownership.stats import binomial_tail
from nnmark.oracles import LabelsOracle, TorchOracle


def _black_box(model, shape):
    return LabelsOracle(TorchOracle(model, shape))


@pytest.fixture(scope="module")
def marked(lenet, mnist):
    return frontier.embed(lenet, mnist, seed=0)


def test_fgsm_moves_every_pixel_by_at_most_eps_within_range(lenet, mnist):
    x, y = mnist.test.x[:32], mnist.test.y[:32]
    adv = frontier.fgsm(TorchOracle(lenet, mnist.shape), x, y, 0.1)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and (adv != x).float().mean() > 0.3
    with torch.no_grad():
        loss = lambda z: torch.nn.functional.cross_entropy(lenet(z), y).item()  # noqa: E731
    assert loss(adv) > loss(x)  # it climbs the loss
    with pytest.raises(ValueError):
        frontier.fgsm(TorchOracle(lenet, mnist.shape), x, y, 0.0)


def test_key_holds_half_true_and_half_false_adversaries_of_the_source_model(lenet, mnist):
    pool = natural_pool(mnist)
    oracle = TorchOracle(lenet, mnist.shape)
    x, y, is_true = frontier.make_key(oracle, pool, 20, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20, 1, 28, 28) and int(is_true.sum()) == 10
    with torch.no_grad():
        answers = lenet(x).argmax(1)
    assert (answers[is_true] != y[is_true]).all() and (answers[~is_true] == y[~is_true]).all()
    with pytest.raises(ValueError):
        frontier.make_key(oracle, pool, 9, eps=0.1, generator=torch.Generator())
    with pytest.raises(DataError):
        frontier.make_key(oracle, pool, 90, eps=0.5, generator=torch.Generator())  # hardly any false adversary


def test_marked_model_is_found_the_source_model_and_a_constant_one_are_not(marked, lenet, mnist, constant_model):
    wm_model, key = marked
    assert key.config["success_before"] == 0.5 and key.config["success"] >= 0.9
    assert key.config["clean_accuracy"] >= models.accuracy(lenet, mnist.test) - 0.02
    v = frontier.verify(_black_box(wm_model, mnist.shape), key)
    assert v.passed and v.details["mismatches"] <= v.details["theta"]
    assert v.queries == 90 + len(key.extras["clean"])
    source = frontier.verify(_black_box(lenet, mnist.shape), key)
    assert not source.passed and source.statistic == 0.5 and source.details["mismatches"] > source.details["theta"]
    top = int(torch.bincount(key.expected).argmax())
    const = frontier.verify(_black_box(constant_model(top), mnist.shape), key)
    assert not const.passed and const.details["rate_clean"] == 1.0


def test_the_key_is_asked_through_the_oracle_counted_and_in_its_micro_batches(lenet, mnist, forward_sizes):
    pool = natural_pool(mnist)
    oracle = TorchOracle(lenet, mnist.shape, batch_size=64)
    made = []
    sizes = forward_sizes(lenet, lambda: made.append(
        frontier.make_key(oracle, pool, 20, eps=0.1, generator=torch.Generator().manual_seed(0))))
    right = int((TorchOracle(lenet, mnist.shape).labels(pool.x) == pool.y).sum())
    assert oracle.queries == len(pool) + 2 * right  # every image, then the gradient and labels of the right ones
    assert max(size for _, size in sizes) == 64 and len(pool) > 64
    assert torch.equal(made[0][0], frontier.make_key(TorchOracle(lenet, mnist.shape), pool, 20, eps=0.1,
                                                     generator=torch.Generator().manual_seed(0))[0])
    with pytest.raises(QueryBudgetExceeded):
        frontier.make_key(TorchOracle(lenet, mnist.shape, budget=len(pool)), pool, 20, eps=0.1,
                          generator=torch.Generator())
    with pytest.raises(AccessError):
        frontier.make_key(_black_box(lenet, mnist.shape), pool, 20, eps=0.1, generator=torch.Generator())


def test_embed_asks_every_model_in_micro_batches_of_batch_size_which_trains_nothing(forward_sizes):
    ds = data.load("digits")
    torch.manual_seed(0)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=4, seed=0)
    made = []  # eps 0.07: 53 true and 99 false adversaries among this model's 152 right natural images (45 needed)
    sizes = forward_sizes(model, lambda: made.append(frontier.embed(model, ds, eps=0.07, epochs=1, batch_size=8,
                                                                     train_batch_size=16, seed=0)))
    asked = [size for training, size in sizes if not training]
    assert max(asked) == 8 and len(natural_pool(ds)) > 8  # every question asked
    assert max(size for training, size in sizes if training) == 16  # the fine-tune's batches
    wm_model, key = made[0]
    assert key.config["batch_size"] == 8 and key.config["train_batch_size"] == 16
    assert key.config["success_before"] == 0.5
    other_model, other = frontier.embed(model, ds, eps=0.07, epochs=1, batch_size=64, train_batch_size=16, seed=0)
    assert models.digest(other_model) == models.digest(wm_model) and torch.equal(other.queries, key.queries)
    assert other.config["success"] == key.config["success"]
    assert models.digest(frontier.embed(model, ds, eps=0.07, epochs=1, batch_size=8, train_batch_size=32,
                                        seed=0)[0]) != models.digest(wm_model)  # the training batch is a setting


def test_theta_is_the_largest_significant_mismatch_count():
    th = frontier.theta(90, 0.5)
    assert binomial_tail(90 - th, 90, 0.5) < 1e-3 <= binomial_tail(90 - th - 1, 90, 0.5)
    assert frontier.theta(4, 0.5) == -1


def test_bad_keys_raise_clear_errors(marked, mnist):
    wm_model, key = marked
    oracle = _black_box(wm_model, mnist.shape)
    with pytest.raises(KeyFileError):
        frontier.verify(oracle, KeyFile(method="adi", config={}, queries=key.queries, expected=key.expected))
    with pytest.raises(KeyFileError):
        frontier.verify(oracle, KeyFile(method="frontier", config={}, queries=key.queries, expected=key.expected))
    with pytest.raises(KeyFileError):
        frontier.verify(oracle, KeyFile(method="frontier", config={}, queries=key.queries,
                                        expected=key.expected + 10, extras=key.extras))
