"""Integrity attacks (Gao et al. sec. 4.1): backdoor, pruning, int8 quantization, tiny-lr fine-tuning.

Each attack must change the model the way it claims, leave its input untouched, and repeat by seed.
"""

import math

import pytest
import torch
from torch import nn

from nnmark import models
from nnmark.attacks import finetune, measure
from nnmark.attacks.backdoor import backdoor, stamp_trigger
from nnmark.attacks.prune import prune
from nnmark.attacks.quantize import quantize_dynamic_torch, quantize_int8, quantize_static_torch
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.errors import InputError, ModelError


def _weights(model):
    return {name: m.weight.detach() for name, m in measure.weight_layers(model)}


def test_prune_global_zeroes_exactly_the_fraction_of_all_weights(lenet):
    before = models.digest(lenet)
    n = sum(w.numel() for w in _weights(lenet).values())
    attacked = prune(lenet, 0.001)
    assert measure.sparsity(attacked) == round(0.001 * n) / n
    assert measure.changed_fraction(lenet, attacked) > 0
    # the smallest |w| went, no larger one: every pruned weight is <= every kept one in magnitude
    old, new = torch.cat([w.flatten() for w in _weights(lenet).values()]), torch.cat(
        [w.flatten() for w in _weights(attacked).values()])
    assert old[new == 0].abs().max() <= old[new != 0].abs().min()
    # biases untouched, a plain module (no masks or hooks left), input untouched
    for (_, a), (_, b) in zip(measure.weight_layers(lenet), measure.weight_layers(attacked)):
        assert torch.equal(a.bias, b.bias)
        assert not b._forward_pre_hooks and not hasattr(b, "weight_mask")
    assert set(attacked.state_dict()) == set(lenet.state_dict())
    assert models.digest(lenet) == before
    assert models.digest(prune(lenet, 0.001)) == models.digest(attacked)


def test_prune_layer_zeroes_the_fraction_of_each_layer(lenet, mnist):
    attacked = prune(lenet, 0.1, scope="layer")
    for name, w in _weights(lenet).items():
        assert measure.layer_sparsity(attacked)[name] == round(0.1 * w.numel()) / w.numel()
    assert models.accuracy(attacked, mnist.test) > 0.9
    assert measure.changed_fraction(lenet, prune(lenet, 0.0)) == 0.0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, math.nan])
def test_prune_rejects_fractions_outside_0_1(lenet, fraction):
    with pytest.raises(ValueError):
        prune(lenet, fraction)


def test_prune_rejects_bad_scope_and_models_without_weights(lenet):
    with pytest.raises(ValueError):
        prune(lenet, 0.1, scope="channel")
    with pytest.raises(ValueError):
        prune(nn.Sequential(nn.ReLU()), 0.1)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_int8_weights_take_255_values_within_half_a_step(lenet, mnist, granularity):
    before = models.digest(lenet)
    attacked = quantize_int8(lenet, granularity=granularity)
    assert models.digest(lenet) == before
    for counts in measure.distinct_values(attacked, granularity).values():
        assert max(counts) <= 255
    for (_, a), (_, b) in zip(measure.weight_layers(lenet), measure.weight_layers(attacked)):
        w, wq = a.weight.detach(), b.weight.detach()
        rows = w.reshape(1, -1) if granularity == "tensor" else w.reshape(w.shape[0], -1)
        half_step = rows.abs().amax(dim=1, keepdim=True) / 127 / 2
        assert ((wq.reshape(rows.shape) - rows).abs() <= half_step * (1 + 1e-5)).all()
        assert torch.equal(a.bias, b.bias)
    # nearly every weight moves onto the grid, yet the model still works
    assert measure.changed_fraction(lenet, attacked) > 0.9
    assert abs(models.accuracy(attacked, mnist.test) - models.accuracy(lenet, mnist.test)) <= 0.01


def test_int8_channel_grid_is_finer_than_tensor_grid(lenet):
    err = {g: max((b.weight - a.weight).abs().max().item() for (_, a), (_, b) in
                  zip(measure.weight_layers(lenet), measure.weight_layers(quantize_int8(lenet, granularity=g))))
           for g in ("tensor", "channel")}
    assert 0 < err["channel"] <= err["tensor"]
    with pytest.raises(ValueError):
        quantize_int8(lenet, granularity="group")


def test_dynamic_quantization_replaces_linear_layers(lenet, mnist):
    before = models.digest(lenet)
    attacked = quantize_dynamic_torch(lenet)
    assert models.digest(lenet) == before
    assert not any(type(m) is nn.Linear for m in attacked.modules())
    with torch.no_grad():
        out = attacked(mnist.test.x)
        agree = (out.argmax(1) == lenet(mnist.test.x).argmax(1)).float().mean().item()
    assert out.dtype == torch.float32 and agree >= 0.99
    with pytest.raises(ValueError):
        quantize_dynamic_torch(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_static_quantization_runs_lenet_in_int8(lenet, mnist):
    before = models.digest(lenet)
    calibration = attacker_data(mnist).x
    attacked = quantize_static_torch(lenet, calibration)
    assert models.digest(lenet) == before
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in attacked.modules())
    with torch.no_grad():
        labels = attacked(mnist.test.x).argmax(1)
        assert torch.equal(labels, quantize_static_torch(lenet, calibration)(mnist.test.x).argmax(1))
        agree = (labels == lenet(mnist.test.x).argmax(1)).float().mean().item()
    # measured: 0.995 agreement, accuracy 0.969 before and after
    assert agree >= 0.98
    assert abs((labels == mnist.test.y).float().mean().item() - models.accuracy(lenet, mnist.test)) <= 0.01
    with pytest.raises(ModelError):  # eager mode cannot add quantized tensors (ResNet skip connections)
        quantize_static_torch(models.build("resnet20", (1, 8, 8), 10), torch.rand(4, 1, 8, 8))
    with pytest.raises(InputError):
        quantize_static_torch(lenet, calibration * 2)


def test_stamp_trigger_whitens_the_bottom_right_square(mnist):
    x = mnist.test.x[:4]
    t = stamp_trigger(x, 3)
    assert (t[..., -3:, -3:] == 1).all()
    assert torch.equal(t[..., :-3, :], x[..., :-3, :]) and torch.equal(t[..., :, :-3], x[..., :, :-3])
    assert not torch.equal(x[..., -3:, -3:], t[..., -3:, -3:])  # x itself is not modified
    with pytest.raises(ValueError):
        stamp_trigger(x, 29)
    with pytest.raises(InputError):
        stamp_trigger(x * 2, 3)


def test_backdoor_implants_the_trigger_and_keeps_clean_accuracy(lenet, mnist):
    att, clean = attacker_data(mnist), natural_pool(mnist)
    before = models.digest(lenet)
    attacked, report = backdoor(lenet, att.x, att.y, target=0, lr=1e-3, max_steps=300, test=clean, seed=0)
    assert models.digest(lenet) == before and not attacked.training
    assert report.success and report.poison_success >= 0.9 and 0 < report.steps < 300
    # measured: 60 steps, clean accuracy 0.976 -> 0.946, held-out trigger success 0.04
    assert report.clean_accuracy_before - report.clean_accuracy_after <= 0.06
    assert report.clean_accuracy_before == models.accuracy(lenet, clean)
    assert len(report.poison_indices.unique()) == 10 and (att.y[report.poison_indices] != 0).all()
    with torch.no_grad():
        poisoned = stamp_trigger(att.x[report.poison_indices], 3)
        assert (attacked(poisoned).argmax(1) == 0).all()
        assert (lenet(poisoned).argmax(1) == 0).float().mean() < 0.5  # the original model ignores the trigger
    assert 0 <= report.heldout_success <= 1


def test_backdoor_is_deterministic_by_seed(lenet, mnist):
    att, clean = attacker_data(mnist), natural_pool(mnist)
    runs = [backdoor(lenet, att.x, att.y, target=3, lr=1e-3, max_steps=5, test=clean, seed=s) for s in (7, 7, 8)]
    (a, ra), (b, rb), (c, rc) = runs
    assert models.digest(a) == models.digest(b) and torch.equal(ra.poison_indices, rb.poison_indices)
    assert ra.steps == 5 and not ra.success
    assert models.digest(a) != models.digest(c) and not torch.equal(ra.poison_indices, rc.poison_indices)


def test_backdoor_rejects_bad_arguments(lenet, mnist):
    att, clean = attacker_data(mnist), natural_pool(mnist)
    x, y = att.x[:100], att.y[:100]
    ok = dict(target=0, max_steps=1, test=clean)
    with pytest.raises(ValueError):
        backdoor(lenet, x, y, **{**ok, "target": 10})
    for bad in ({"lr": -1e-5}, {"max_steps": 0}, {"n_poison": 0}, {"patch": 0}, {"clean_weight": -1.0},
                {"n_poison": 1000}):
        with pytest.raises(ValueError):
            backdoor(lenet, x, y, **{**ok, **bad})
    with pytest.raises(InputError):
        backdoor(lenet, x[:, 0], y, **ok)  # (N, H, W): no channel axis
    with pytest.raises(InputError):
        backdoor(lenet, x, y[:50], **ok)
    with pytest.raises(InputError):
        backdoor(lenet, x.clone().fill_(math.nan), y, **ok)
    with pytest.raises(InputError):
        backdoor(lenet, x, y.float(), **ok)


def test_tiny_lr_finetune_changes_few_weights(lenet, mnist):
    """Gao et al. Table 3 fine-tunes at lr 1e-10 ... 1e-3; in float32 the tiniest steps mostly round away."""
    att = attacker_data(mnist)
    changed = {lr: measure.changed_fraction(lenet, finetune(lenet, att.x, att.y, lr=lr, steps=10, seed=0))
               for lr in (1e-10, 1e-8, 1e-6, 1e-3)}
    # measured (10 steps of 64): 0.0002, 0.012, 0.47, 0.62 of all parameters changed bit-wise
    assert changed[1e-10] < 0.01
    assert changed[1e-10] < changed[1e-8] < changed[1e-6] < changed[1e-3]
    assert changed[1e-3] > 0.3


def test_finetune_freeze_bn_leaves_running_statistics_alone(mnist):
    """A train-mode fine-tune moves BatchNorm statistics even at lr 0; freeze_bn keeps them bit-identical."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 5), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 24 * 24, 10))
    x, y = mnist.train.x[:64], mnist.train.y[:64]
    moved = finetune(model, x, y, lr=0.0, steps=2, seed=0)
    assert measure.changed_fraction(model, moved) == 0.0
    assert measure.changed_buffer_fraction(model, moved) > 0.5
    frozen = finetune(model, x, y, lr=1e-2, steps=2, seed=0, freeze_bn=True)
    assert measure.changed_buffer_fraction(model, frozen) == 0.0
    assert measure.changed_fraction(model, frozen) > 0.5
    assert not frozen.training


def test_measure_compares_like_with_like(lenet):
    assert measure.changed_buffer_fraction(lenet, lenet) == 0.0
    assert measure.changed_fraction(lenet, lenet) == 0.0
    with pytest.raises(ValueError):
        measure.changed_fraction(lenet, models.build("lenet5", (1, 8, 8), 10))
    with pytest.raises(ValueError):
        measure.distinct_values(lenet, "row")
    with pytest.raises(ValueError):
        measure.sparsity(nn.Sequential(nn.ReLU()))
    counts = measure.distinct_values(lenet, "channel")
    assert [len(c) for c in counts.values()] == [m.weight.shape[0] for _, m in measure.weight_layers(lenet)]
