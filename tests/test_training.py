"""models.training.fit: the one training loop (batches, optimizer, schedule, BatchNorm mode, parameters, hooks)."""

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

from nnmark import models
from nnmark.errors import ArgumentError
from nnmark.models import training
from nnmark.models.training import (
    batches_per_epoch, check_micro_batch, fit, fitting_micro_batch, index_batches, micro_batches, resolve_micro_batch,
    saved_bytes_per_image,
)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


@pytest.fixture
def xy():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(33, 1, 8, 8, generator=gen), torch.randint(4, (33,), generator=gen)


def test_index_batches_cover_each_epoch_once_or_stream_fixed_size_steps():
    gen = torch.Generator().manual_seed(0)
    epoch = list(index_batches(33, 8, gen))
    assert [len(b) for b in epoch] == [8, 8, 8, 9]  # a lone last sample joins the batch before
    assert sorted(torch.cat(epoch).tolist()) == list(range(33)) and batches_per_epoch(33, 8) == len(epoch)
    stream = list(index_batches(5, 4, gen, steps=4))
    assert [len(b) for b in stream] == [4] * 4  # batches span permutations
    assert sorted(torch.cat(stream).tolist()[:5]) == list(range(5))  # the first 5 indices: one permutation


def test_fit_is_deterministic_by_seed_and_counts_its_steps(xy):
    x, y = xy
    a, b, c = net(), net(), net()
    assert fit(a, x, y, lr=1e-2, epochs=2, batch_size=8, seed=3) == 2 * 4
    fit(b, x, y, lr=1e-2, epochs=2, batch_size=8, seed=3)
    fit(c, x, y, lr=1e-2, epochs=2, batch_size=8, seed=4)
    assert models.digest(a) == models.digest(b) != models.digest(c) and not a.training
    assert fit(net(), x, y, lr=1e-2, steps=5, seed=0, stop=lambda step: step == 3) == 3


def test_fit_trains_only_the_given_parameters_and_keeps_bn_statistics_when_frozen(xy):
    x, y = xy
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = list(model[-1].parameters())
    fit(model, x, y, lr=1e-1, steps=3, optimizer="sgd", momentum=0.9, mode="freeze_bn", params=head)
    after = model.state_dict()
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"4.weight", "4.bias"}  # BatchNorm running statistics and the conv untouched


def test_fit_hooks_replace_the_loss_and_act_after_each_step(xy):
    x, y = xy
    model, calls = net(), []
    soft = torch.softmax(torch.randn(len(x), 4, generator=torch.Generator().manual_seed(1)), dim=1)

    def soft_loss(m, xb, tb):
        return -(tb * torch.log_softmax(m(xb), dim=1)).sum(dim=1).mean()

    fit(model, x, soft, lr=1e-2, epochs=1, batch_size=16, loss=soft_loss, after_step=lambda: calls.append(1))
    assert len(calls) == batches_per_epoch(33, 16)


def test_fit_refuses_bad_arguments(xy):
    x, y = xy
    for bad in ({"epochs": 1, "steps": 1}, {}, {"epochs": -1}, {"epochs": 1, "batch_size": 0},
                {"epochs": 1, "optimizer": "lbfgs"}, {"epochs": 1, "mode": "frozen"},
                {"epochs": 1, "schedule": "step"}):
        with pytest.raises(ArgumentError):
            fit(net(), x, y, lr=1e-2, **bad)
    with pytest.raises(ArgumentError):
        fit(net(), x, y, lr=0.0, epochs=1)  # Adam needs lr > 0; SGD takes 0
    assert fit(net(), x, y, lr=0.0, epochs=1, optimizer="sgd") == 1  # 33 = 32 + a lone last sample
    with pytest.raises(ArgumentError):
        fit(net(), x, y[:5], lr=1e-2, epochs=1)


def _plain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def test_a_step_in_micro_batches_is_the_whole_batch_step_without_batch_statistics(xy, forward_sizes):
    x, y = xy
    whole, chunked = _plain(), _plain()
    fit(whole, x, y, lr=0.05, epochs=2, batch_size=16, optimizer="sgd", momentum=0.9, seed=1)
    with micro_batches(5):
        sizes = forward_sizes(chunked, lambda: fit(chunked, x, y, lr=0.05, epochs=2, batch_size=16, optimizer="sgd",
                                                   momentum=0.9, seed=1))
    assert max(size for _, size in sizes) == 5 and {1, 2} & {size for _, size in sizes}  # 16 = 5+5+5+1, 17 = ...+2
    for a, b in zip(whole.parameters(), chunked.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not any(torch.equal(a, b) for a, b in zip(_plain().parameters(), chunked.parameters()))  # it trained
    with micro_batches(17):  # chunks as large as the largest batch (16 and 17): the very same steps
        same = _plain()
        fit(same, x, y, lr=0.05, epochs=2, batch_size=16, optimizer="sgd", momentum=0.9, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), same.parameters()))


def test_micro_batches_end_with_their_block_and_refuse_bad_sizes(xy, forward_sizes):
    x, y = xy
    with micro_batches(4):
        pass
    model = net()
    assert max(size for _, size in forward_sizes(model, lambda: fit(model, x, y, lr=0.01, steps=1,
                                                                    batch_size=16))) == 16
    with micro_batches(4):  # BatchNorm: chunks of their own statistics; the model still trains
        assert max(size for _, size in forward_sizes(model, lambda: fit(model, x, y, lr=0.01, steps=1,
                                                                        batch_size=16))) == 4
    for bad in (0, -1, 2.5, True, "4", "whole"):
        with pytest.raises(ArgumentError, match="micro-batch"):
            with micro_batches(bad):
                pass
    with pytest.raises(ArgumentError, match="None or an integer"):
        check_micro_batch("auto", auto=False)  # where a size must be concrete (a shadow spec's)


def test_the_activations_a_pass_saves_are_counted_per_image_and_leave_no_trace(xy):
    x, _ = xy
    model = net().train()
    before = [b.clone() for b in model.buffers()]
    # the Conv2d input (1x8x8), the BatchNorm input and the ReLU output (3x6x6 each), float32; Flatten's view and the
    # Linear's input share the ReLU output's storage; the parameters and BatchNorm's batch statistics do not grow
    per = saved_bytes_per_image(model, x)
    assert per == 4 * (64 + 108 + 108)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))  # running statistics restored
    dropout = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 4)).train()
    torch.manual_seed(5)
    saved_bytes_per_image(dropout, x)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # dropout drew from a forked generator
    pruned = _plain()
    torch.nn.utils.prune.l1_unstructured(pruned[0], "weight", 0.5)  # its weight is a tensor computed each pass
    assert saved_bytes_per_image(pruned, x) == saved_bytes_per_image(_plain(), x) == 4 * (64 + 108)
    assert saved_bytes_per_image(_plain().requires_grad_(False), x) == 0  # nothing trains: nothing is kept
    assert saved_bytes_per_image(model, x[:1]) == per  # one image is enough: it is repeated
    assert fitting_micro_batch(model, x, budget=5 * per + 1) == 5 and fitting_micro_batch(model, x, budget=1) == 1
    with pytest.raises(ArgumentError, match="at least 1 image"):
        saved_bytes_per_image(model, x[:0])


def test_a_cards_activation_budget_is_a_share_of_its_free_memory(monkeypatch):
    free = {"cuda": 40 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["cuda"], 80 << 30))
    assert training.activation_budget(torch.device("cpu")) == training.ACTIVATION_BUDGET == 1 << 30
    assert training.activation_budget(torch.device("cuda:0")) == 10 << 30  # a quarter of 40 GiB free
    free["cuda"] = 1 << 30
    assert training.activation_budget(torch.device("cuda:0")) == 1 << 30  # never below the CPU's budget


def test_auto_micro_batches_split_only_the_batches_the_activation_budget_cannot_hold(xy, forward_sizes, monkeypatch):
    x, y = xy
    kwargs = {"lr": 0.05, "epochs": 1, "batch_size": 16, "optimizer": "sgd", "momentum": 0.9, "seed": 1}
    whole, roomy, tight = _plain(), _plain(), _plain()
    fit(whole, x, y, **kwargs)
    with micro_batches("auto"):
        sizes = forward_sizes(roomy, lambda: fit(roomy, x, y, **kwargs))
    assert max(size for _, size in sizes) == 17  # 1 GiB holds every batch: whole batches, the very same steps
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), roomy.parameters()))
    assert resolve_micro_batch("auto", whole, x, 16) is None and resolve_micro_batch(3, whole, x, 16) == 3
    monkeypatch.setattr(training, "ACTIVATION_BUDGET", 5 * saved_bytes_per_image(tight, x))
    assert resolve_micro_batch("auto", whole, x, 16) == 5 and resolve_micro_batch("auto", whole, x, 5) is None
    with micro_batches("auto"):
        sizes = forward_sizes(tight, lambda: fit(tight, x, y, **kwargs))
    assert max(size for _, size in sizes) == 5  # 16 = 5 + 5 + 5 + 1 images a pass (and the 2 measured first)
    for a, b in zip(whole.parameters(), tight.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
