"""Ownership attacks: Adi et al.'s fine-tune modes, prune + fine-tune, relative weight noise (MetaFinger eq. 1),
input transforms and the oracle that applies them."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnmark import models
from nnmark.attacks.modes import MODES, finetune_mode, last_linear
from nnmark.attacks.noise import relative_weight_noise
from nnmark.attacks.measure import weight_layers
from nnmark.attacks.prune_finetune import prune_finetune
from nnmark.attacks.transforms import (
    TRANSFORMS,
    GaussianNoise,
    GaussianSmoothing,
    MeanSmoothing,
    MedianSmoothing,
    RandomResizePad,
    UniformNoise,
    UniversalNoise,
)
from nnmark.data import roles
from nnmark.errors import AccessError, DataError, InputError, ModelError, QueryBudgetExceeded
from nnmark.oracles import LabelsOracle, TorchOracle
from nnmark.oracles.transformed import TransformedOracle

LAST = "classifier.4."  # LeNet-5's last nn.Linear


@pytest.fixture(scope="module")
def attacker(mnist):
    return roles.attacker_data(mnist)


@pytest.fixture(scope="module")
def natural(mnist):
    return roles.natural_pool(mnist)


def changed(a: nn.Module, b: nn.Module) -> set[str]:
    """Names of the state_dict tensors that differ between a and b."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


# ---- fine-tune modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_trains_exactly_the_parameters_it_claims(lenet, attacker, mode):
    before = models.digest(lenet)
    attacked = finetune_mode(lenet, attacker.x, attacker.y, mode=mode, epochs=1, seed=0)
    assert models.digest(lenet) == before and attacked is not lenet
    assert not attacked.training
    diff = changed(lenet, attacked)
    assert last_linear(attacked) is attacked.classifier[4]
    if mode.endswith("LL"):
        assert diff == {LAST + "weight", LAST + "bias"}
    else:
        assert {LAST + "weight", "features.0.weight", "classifier.0.weight"} <= diff
    assert all(p.requires_grad for p in attacked.parameters())


def test_retrain_modes_reinitialise_the_last_layer_before_any_training(lenet, attacker):
    rtll, rtal, ftal = (finetune_mode(lenet, attacker.x, attacker.y, mode=m, epochs=0, seed=3)
                        for m in ("RTLL", "RTAL", "FTAL"))
    assert models.digest(ftal) == models.digest(lenet)
    assert models.digest(rtll) == models.digest(rtal)
    assert changed(lenet, rtal) == {LAST + "weight", LAST + "bias"}
    bound = 1 / math.sqrt(84)
    w = rtal.classifier[4].weight
    assert w.abs().max() <= bound and w.std() > bound / 3  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    other = finetune_mode(lenet, attacker.x, attacker.y, mode="RTAL", epochs=0, seed=4)
    assert models.digest(other) != models.digest(rtal)


def test_fine_tuning_keeps_accuracy_and_retraining_recovers_it(lenet, attacker, natural):
    base = models.accuracy(lenet, natural)
    for mode in ("FTLL", "FTAL"):
        assert models.accuracy(finetune_mode(lenet, attacker.x, attacker.y, mode=mode, epochs=2), natural) > base - 0.02
    chance = models.accuracy(finetune_mode(lenet, attacker.x, attacker.y, mode="RTLL", epochs=0), natural)
    retrained = models.accuracy(finetune_mode(lenet, attacker.x, attacker.y, mode="RTLL", epochs=3), natural)
    assert chance < 0.5 < 0.9 < retrained


def test_fine_tune_modes_are_deterministic_by_seed(lenet, attacker):
    a, b, c = (finetune_mode(lenet, attacker.x[:200], attacker.y[:200], mode="FTAL", epochs=1, seed=s)
               for s in (0, 0, 1))
    assert models.digest(a) == models.digest(b) != models.digest(c)


def test_fine_tune_modes_refuse_bad_arguments(lenet, attacker):
    x, y = attacker.x[:8], attacker.y[:8]
    with pytest.raises(ValueError, match="mode"):
        finetune_mode(lenet, x, y, mode="ftll")
    with pytest.raises(DataError):
        finetune_mode(lenet, x, y[:7], mode="FTLL")
    with pytest.raises(DataError):
        finetune_mode(lenet, x * 2, y, mode="FTLL")
    with pytest.raises(DataError):
        finetune_mode(lenet, x, y + 10, mode="FTLL")
    with pytest.raises(ValueError):
        finetune_mode(lenet, x, y, mode="FTLL", epochs=-1)
    no_linear = nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten())
    with pytest.raises(ModelError, match="no nn.Linear"):
        finetune_mode(no_linear, x, y, mode="FTLL")
    with pytest.raises(DataError, match="only 10 classes"):
        finetune_mode(no_linear, x, y + 10, mode="FTAL")
    with pytest.raises(ModelError, match="fails on images of shape"):
        finetune_mode(lenet, x[:, :, :20], y, mode="FTAL")


def test_ftal_trains_a_classifier_without_a_last_linear_layer(attacker):
    torch.manual_seed(0)
    conv_head = nn.Sequential(nn.Conv2d(1, 8, 5), nn.GELU(), nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten()).eval()
    x, y = attacker.x[:256], attacker.y[:256]
    loss = lambda m: F.cross_entropy(m(x), y).item()  # noqa: E731
    with torch.no_grad():
        before = loss(conv_head)
    attacked = finetune_mode(conv_head, x, y, mode="FTAL", epochs=3, seed=0)
    with torch.no_grad():
        assert loss(attacked) < before and loss(conv_head) == before  # trained a copy, the model left untouched
    assert not attacked.training


# ---- relative weight noise (MetaFinger eq. 1) --------------------------------------------------------


def test_relative_noise_has_the_per_layer_std_of_eq_1(lenet):
    before = models.digest(lenet)
    alpha = 4.0
    noisy = relative_weight_noise(lenet, alpha, seed=0)
    assert models.digest(lenet) == before and not noisy.training
    original = dict(lenet.named_parameters())
    checked = 0
    for name, p in noisy.named_parameters():
        d = p.detach() - original[name].detach()
        assert (d != 0).all(), name
        if d.numel() >= 800:  # enough draws to measure the std within 10% (4 standard errors)
            expected = original[name].detach().std() / alpha
            assert abs(d.std() / expected - 1) < 0.1, name
            assert abs(d.mean()) < 4 * expected / math.sqrt(d.numel()), name
            checked += 1
    assert checked == 4  # conv2, fc1, fc2 and fc3 weights
    assert models.digest(relative_weight_noise(lenet, alpha, seed=0)) == models.digest(noisy)
    assert models.digest(relative_weight_noise(lenet, alpha, seed=1)) != models.digest(noisy)
    small = relative_weight_noise(lenet, 1.0, seed=0)
    ratio = (small.classifier[0].weight - lenet.classifier[0].weight).std() / (
        noisy.classifier[0].weight - lenet.classifier[0].weight).std()
    assert 3.6 < ratio < 4.4  # smaller alpha, larger noise


def test_relative_noise_on_a_one_element_tensor_uses_its_magnitude():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(-0.5)
    draws = torch.stack([relative_weight_noise(model, 2.0, seed=s).weight.detach().reshape(()) for s in range(400)])
    assert abs((draws + 0.5).std() / 0.25 - 1) < 0.15
    with pytest.raises(ValueError):
        relative_weight_noise(model, 0.0)


# ---- prune + fine-tune -------------------------------------------------------------------------------


def test_prune_finetune_keeps_pruned_weights_at_zero_and_recovers_accuracy(lenet, attacker, natural):
    before = models.digest(lenet)
    pruned_only = prune_finetune(lenet, attacker.x, attacker.y, fraction=0.7, epochs=0)
    tuned = prune_finetune(lenet, attacker.x, attacker.y, fraction=0.7, epochs=3, seed=0)
    assert models.digest(lenet) == before and not tuned.training
    assert tuned.state_dict().keys() == lenet.state_dict().keys()
    assert not any(hasattr(m, "weight_mask") for m in tuned.modules())
    pruned_weights = dict(weight_layers(pruned_only))
    for (name, orig), (_, layer) in zip(weight_layers(lenet), weight_layers(tuned), strict=True):
        w0, w = orig.weight.detach(), layer.weight.detach()
        k = round(0.7 * w0.numel())
        smallest = w0.abs().flatten().argsort()[:k]
        assert (w.flatten()[smallest] == 0).all()
        assert (w == 0).sum() == k
        assert not torch.equal(w, pruned_weights[name].weight)  # it was fine-tuned
    # the paper's observation: test accuracy recovers after pruning 70% of each layer
    assert models.accuracy(pruned_only, natural) + 0.03 < models.accuracy(tuned, natural)
    assert models.accuracy(tuned, natural) > models.accuracy(lenet, natural) - 0.03
    again = prune_finetune(lenet, attacker.x, attacker.y, fraction=0.7, epochs=3, seed=0)
    assert models.digest(again) == models.digest(tuned)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError):
            prune_finetune(lenet, attacker.x, attacker.y, fraction=bad)


# ---- input transforms --------------------------------------------------------------------------------

RANDOM = ("resize_pad", "gaussian_noise", "uniform_noise", "universal_noise")


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8)])
def test_every_transform_keeps_shape_dtype_range_and_is_seeded(name, shape):
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(0))
    x[0] = 0.0
    x[1] = 1.0
    kept = x.clone()
    t = TRANSFORMS[name]()
    out = t(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    assert torch.equal(TRANSFORMS[name]()(x), out)  # same seed, same output
    if name in RANDOM:
        assert not torch.equal(TRANSFORMS[name](seed=1)(x), out)
    assert torch.equal(x, kept)  # the input is untouched


@pytest.mark.parametrize(
    "t",
    [GaussianNoise(0.0), UniformNoise(0.0), UniversalNoise(0.0), MeanSmoothing(1), MedianSmoothing(1),
     GaussianSmoothing(1), RandomResizePad(0.0)],
    ids=repr,
)
def test_identity_settings_leave_x_unchanged(t, mnist):
    x = mnist.test.x[:8]
    assert torch.allclose(t(x), x, rtol=0, atol=1e-6)


def test_smoothing_kernels_preserve_constant_images_and_median_removes_salt():
    flat = torch.full((2, 3, 10, 10), 0.3)
    for t in (MeanSmoothing(5), GaussianSmoothing(5, 1.5), MedianSmoothing(3)):
        assert torch.allclose(t(flat), flat, atol=1e-6)
    salted = flat.clone()
    salt = torch.rand(flat.shape, generator=torch.Generator().manual_seed(0)) < 0.05
    salted[salt] = 1.0
    assert salt.sum() > 10
    assert torch.allclose(MedianSmoothing(3)(salted), flat)
    assert (MeanSmoothing(3)(salted) > 0.35).any()  # a mean only spreads the salt
    k = GaussianSmoothing(3, 0.8).kernel()
    assert torch.isclose(k.sum(), torch.tensor(1.0, dtype=k.dtype)) and k[1, 1] == k.max()


def test_random_noises_are_fresh_per_image_or_one_universal_pattern():
    x = torch.full((4, 1, 6, 6), 0.5)
    u = UniformNoise(0.1, seed=0)(x) - 0.5
    assert u.abs().max() <= 0.1 + 1e-7 and not torch.equal(u[0], u[1])
    t = UniversalNoise(0.1, seed=0)
    v = t(x) - 0.5
    assert v.abs().max() <= 0.1 + 1e-7 and (v == v[0]).all()
    assert torch.allclose(v[0], t.pattern((1, 6, 6))) and torch.equal(t(x[:1]), t(x)[:1])
    g = GaussianNoise(0.05, seed=0)
    first, second = g(x), g(x)
    assert not torch.equal(first, second)  # a deployed preprocessing draws afresh each call
    assert torch.equal(GaussianNoise(0.05, seed=0)(x), first)
    assert abs((first - 0.5).std() - 0.05) < 0.01


def test_resize_pad_shrinks_each_image_onto_a_canvas_of_fill(mnist):
    x = torch.ones(64, 1, 28, 28)
    out = RandomResizePad(0.5, seed=0)(x)
    rows, cols = (out > 0).any(dim=3).sum(dim=(1, 2)), (out > 0).any(dim=2).sum(dim=(1, 2))
    assert ((rows >= 14) & (rows <= 28)).all() and (cols == rows).all()
    assert torch.equal(out.sum(dim=(1, 2, 3)), (rows * cols).float())  # a constant image stays constant inside
    assert len(set(rows.tolist())) > 3  # each image gets its own size
    corners = out[:, 0, 0, 0] == 0
    assert 0 < corners.sum() < 64  # and its own offset
    images = RandomResizePad(0.5, seed=0)(mnist.test.x[:64])  # the same draws: they depend on the shape only
    for i in range(3):
        r, c = (out[i, 0] > 0).any(dim=1).nonzero().flatten(), (out[i, 0] > 0).any(dim=0).nonzero().flatten()
        resized = F.interpolate(mnist.test.x[i:i + 1], size=(len(r), len(c)), mode="bilinear", align_corners=False)
        assert torch.allclose(images[i, :, r[0]:r[-1] + 1, c[0]:c[-1] + 1], resized[0], atol=1e-5)


def test_transforms_refuse_bad_inputs_and_arguments():
    t = MedianSmoothing(3)
    for bad in (torch.rand(2, 8, 8), torch.full((1, 1, 8, 8), float("nan")), torch.full((1, 1, 8, 8), 1.5),
                torch.zeros(0, 1, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.int64)):
        with pytest.raises(InputError):
            t(bad)
    for make in (lambda: MeanSmoothing(2), lambda: MedianSmoothing(0), lambda: GaussianSmoothing(3, 0.0),
                 lambda: GaussianNoise(-0.1), lambda: UniformNoise(float("nan")), lambda: RandomResizePad(1.0)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError, match="kernel size"):
        MeanSmoothing(9)(torch.rand(1, 1, 4, 4))


# ---- the transforming oracle -------------------------------------------------------------------------


def test_transformed_oracle_answers_on_transformed_inputs_and_counts(lenet, natural):
    x = natural.x[:40]
    inner = TorchOracle(lenet, (1, 28, 28))
    suspect = TransformedOracle(inner, MedianSmoothing(3), budget=60)
    assert suspect.access == "probabilities" and suspect.num_classes == 10
    labels = suspect.labels(x)
    assert torch.equal(labels, inner.labels(MedianSmoothing(3)(x)))
    assert (labels == natural.y[:40]).float().mean() > 0.9  # natural images survive smoothing
    p = suspect.probabilities(x[:10])
    assert p.shape == (10, 10) and suspect.queries == 50 and inner.queries == 90
    with pytest.raises(QueryBudgetExceeded):
        suspect.labels(x[:11])
    assert suspect.queries == 50
    with pytest.raises(AccessError):
        suspect.gradient(lambda out: out[:, 0], x[:2])
    with pytest.raises(InputError):
        suspect.labels(x[:2] * 2)
    noisy = TransformedOracle(TorchOracle(lenet, (1, 28, 28)), GaussianNoise(0.3, seed=0))
    assert torch.equal(noisy.labels(x), inner.labels(GaussianNoise(0.3, seed=0)(x)))


def test_transformed_oracle_never_gives_more_than_its_inner_oracle(lenet, natural):
    suspect = TransformedOracle(LabelsOracle(TorchOracle(lenet, (1, 28, 28))), UniversalNoise(0.05))
    assert suspect.access == "labels" and not suspect.can("probabilities")
    with pytest.raises(AccessError):
        suspect.probabilities(natural.x[:2])
    with pytest.raises(ValueError):
        TransformedOracle(TorchOracle(lenet, (1, 28, 28)), "median")
