"""The thief's attacks, each claim in miniature on 8x8 digits: extraction through an oracle, PGD adversarial
training, fine-pruning, distillation into another architecture, noise then fine-tune, and what counts as a theft."""

import pytest
import torch
from torch import nn

from nnmark import data, models
from nnmark.attacks import ATTACKS, measure
from nnmark.attacks.adversarial import adversarial_train, pgd, robust_accuracy
from nnmark.attacks.distill import SOK_TEMPERATURE, build_student, distill, fresh_copy
from nnmark.attacks.extract import extract, extract_from, query_set
from nnmark.attacks.fineprune import channel_activation, fine_prune, last_conv, zero_channels
from nnmark.attacks.noise import noise_finetune, relative_weight_noise
from nnmark.attacks.prune_finetune import prune_finetune
from nnmark.attacks.registry import ACCURACY
from nnmark.bench import thefts
from nnmark.errors import AccessError, ArgumentError, ModelError, QueryBudgetExceeded
from nnmark.models.lenet import LeNet5
from nnmark.oracles import LabelsOracle, TorchOracle


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(256, 10))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def owner_thief(digits):
    return data.halves(digits)


@pytest.fixture(scope="module")
def victim(owner_thief):
    """The owner's model, trained on the owner's half only."""
    torch.manual_seed(0)
    return models.train(small_cnn(), owner_thief[0], epochs=8, seed=0)


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x).argmax(1) == b(x).argmax(1)).float().mean().item()


def test_extraction_through_a_label_only_oracle_copies_the_victim_and_spends_exactly_the_budget(victim, owner_thief,
                                                                                                 digits):
    thief = owner_thief[1]
    oracle = LabelsOracle(TorchOracle(victim, digits.shape), budget=600)
    copy, report = extract_from(oracle, thief.x, fresh_copy(victim, 1), queries=600, epochs=10, test=digits.test)
    assert oracle.queries == report.queries == 600 and report.answers == "labels"
    # measured: agreement 0.93 on held-out digits, copy's accuracy 0.86 (victim 0.91)
    assert agreement(copy, victim, digits.test.x) > 0.6  # chance is about 0.1
    assert report.test_accuracy == models.accuracy(copy, digits.test) > 0.5
    with pytest.raises(QueryBudgetExceeded):
        extract_from(oracle, thief.x, fresh_copy(victim, 1), queries=1)  # the budget is spent
    fresh = LabelsOracle(TorchOracle(victim, digits.shape), budget=600)
    with pytest.raises(QueryBudgetExceeded):
        extract_from(fresh, thief.x, fresh_copy(victim, 1), queries=601)
    assert fresh.queries == 0  # refused before anything was asked
    with pytest.raises(AccessError):
        extract_from(fresh, thief.x, fresh_copy(victim, 1), answers="probabilities")
    with pytest.raises(ModelError, match="3 outputs but the victim answers for 10"):
        extract_from(fresh, thief.x, nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    with pytest.raises(ArgumentError, match="at most"):
        extract_from(fresh, thief.x, fresh_copy(victim, 1), queries=10**9)  # refused before 256 GB are drawn
    assert fresh.queries == 0


def test_the_registered_extraction_never_reads_the_thiefs_labels(victim, owner_thief):
    thief = owner_thief[1]
    x = thief.x[:200]
    one, report = extract(victim, x, thief.y[:200], epochs=1, answers="probabilities", student_arch="lenet5")
    other, _ = extract(victim, x, torch.zeros(200, dtype=torch.int64), epochs=1, answers="probabilities",
                       student_arch="lenet5")
    assert models.digest(one) == models.digest(other) and isinstance(one, LeNet5)
    assert report.queries == 200 and report.test_accuracy is None


def test_query_sets_repeat_augment_or_replace_the_thiefs_images():
    x = torch.rand(10, 1, 8, 8)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = query_set(x, 25, gen=gen())
    assert plain.shape == (25, 1, 8, 8) and all(any(torch.equal(q, i) for i in x) for q in plain)
    for augment in ("crop-flip", "noise"):
        out = query_set(x, 25, augment=augment, gen=gen())
        assert out.shape == plain.shape and 0 <= out.min() and out.max() <= 1
        assert sum(any(torch.equal(q, i) for i in x) for q in out) < 10  # most queries are new images
    noise = query_set(torch.zeros(3, 1, 8, 8), 5, inputs="uniform", gen=gen())
    assert noise.shape == (5, 1, 8, 8) and noise.std() > 0.2  # uniform noise, not the (all-black) images
    assert torch.equal(query_set(x, 25, augment="crop-flip", gen=gen()), query_set(x, 25, augment="crop-flip",
                                                                                     gen=gen()))


def test_pgd_stays_in_the_ball_and_an_adversarially_trained_copy_resists_it(victim, owner_thief, digits):
    eps, step, steps = 0.15, 0.05, 5
    held_out = data.Split(digits.test.x[:150], digits.test.y[:150])
    x_adv = pgd(victim, held_out.x, held_out.y, eps=eps, step_size=step, steps=steps, gen=torch.Generator())
    assert (x_adv - held_out.x).abs().max() <= eps + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    before = robust_accuracy(victim, held_out, eps=eps, step_size=step, steps=steps)
    assert before < models.accuracy(victim, held_out) - 0.2  # PGD hurts the victim
    robust, report = adversarial_train(victim, owner_thief[1].x, owner_thief[1].y, eps=eps, step_size=step,
                                       steps=steps, epochs=4, lr=1e-2, test=held_out)
    after = robust_accuracy(robust, held_out, eps=eps, step_size=step, steps=steps)
    # measured: 0.17 under PGD before, 0.55 after; clean 0.94 -> 0.91
    assert after > before + 0.2 and report.robust_accuracy == after
    assert report.test_accuracy == models.accuracy(robust, held_out) > 0.8
    with pytest.raises(ArgumentError):
        adversarial_train(victim, owner_thief[1].x, owner_thief[1].y, eps=2.0)


def test_fine_pruning_zeroes_the_dormant_channels_and_keeps_the_accuracy(victim, owner_thief, digits):
    thief = owner_thief[1]
    name, conv, norm = last_conv(victim)
    assert name == "2" and norm is None
    activation = channel_activation(victim, conv, thief.x)
    pruned, report = fine_prune(victim, thief.x, thief.y, fraction=0.5, epochs=3, test=digits.test)
    assert len(report.pruned) == 8 and report.layer == "2"
    assert sorted(activation[list(report.pruned)].tolist()) == sorted(activation.sort().values[:8].tolist())
    kept = [c for c in range(16) if c not in report.pruned]
    assert (pruned[2].weight[list(report.pruned)] == 0).all() and (pruned[2].bias[list(report.pruned)] == 0).all()
    assert (pruned[2].weight[kept].abs().sum(dim=(1, 2, 3)) > 0).all()
    assert channel_activation(pruned, pruned[2], thief.x)[list(report.pruned)].abs().max() == 0
    victim_acc = models.accuracy(victim, digits.test)
    # measured: victim 0.91, pruned 0.78, fine-tuned 0.88
    assert report.test_accuracy == models.accuracy(pruned, digits.test) >= victim_acc - 0.1
    with pytest.raises(ModelError):
        fine_prune(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), thief.x, thief.y)


def test_pruning_a_channel_followed_by_batchnorm_silences_its_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    net[1].running_mean.fill_(-1.0)  # a bare zeroed filter would still output beta - mean * gamma / std
    name, conv, norm = last_conv(net)
    assert name == "0" and norm is net[1]
    zero_channels(conv, norm, torch.tensor([1, 3]))
    out = net[:2](torch.rand(5, 1, 8, 8))
    assert (out[:, [1, 3]] == 0).all() and (out[:, [0, 2]] != 0).any()


def test_distillation_into_another_architecture_returns_that_architecture(victim, owner_thief, digits):
    thief = owner_thief[1]
    student = distill(victim, thief.x, thief.y, temperature=SOK_TEMPERATURE, epochs=10, student_arch="lenet5")
    assert isinstance(student, LeNet5) and not student.training
    assert student(digits.test.x[:2]).shape == (2, 10)
    assert agreement(student, victim, digits.test.x) > 0.6  # measured: 0.84
    same = distill(victim, thief.x[:100], thief.y[:100], epochs=1)
    assert type(same) is nn.Sequential
    built = build_student("lenet5", (1, 8, 8), 10, seed=0)
    assert models.digest(built) == models.digest(build_student("lenet5", (1, 8, 8), 10, seed=0))
    with pytest.raises(ArgumentError):
        distill(victim, thief.x, thief.y, student_arch="lenet5", student=small_cnn())


def test_noise_then_fine_tune_recovers_from_noise_that_breaks_the_model(victim, owner_thief, digits):
    thief = owner_thief[1]
    noisy = relative_weight_noise(victim, alpha=0.5, seed=0)
    healed = noise_finetune(victim, thief.x, thief.y, alpha=0.5, epochs=3, seed=0)
    # measured: 0.91 victim, 0.15 noisy, 0.91 noisy and fine-tuned
    assert models.accuracy(noisy, digits.test) < 0.5 < models.accuracy(healed, digits.test)


def test_the_sok_strengths_are_reachable(victim, owner_thief):
    thief = owner_thief[1]
    pruned = prune_finetune(victim, thief.x, thief.y, fraction=0.9, epochs=1)
    assert all(abs(s - 0.9) < 0.01 for s in measure.layer_sparsity(pruned).values())
    assert "RTAL" in ATTACKS["finetune-mode"].options[0].choices


def test_a_copy_is_a_theft_while_it_keeps_the_victims_accuracy_less_five_points():
    assert measure.is_theft(0.90, 0.85) and measure.is_theft(0.90, 0.95)
    assert not measure.is_theft(0.90, 0.8499)
    assert measure.is_theft(0.90, 0.88, margin=2.0) and not measure.is_theft(0.90, 0.879, margin=2.0)
    assert measure.is_theft(0.5, 0.5, margin=0.0) and not measure.is_theft(0.5, 0.4999, margin=0.0)
    for bad in ((90.0, 85.0), (0.9, -0.1), (0.9, 0.8, -1.0)):
        with pytest.raises(ArgumentError):
            measure.is_theft(*bad)
    assert measure.split_accuracy(nn.Linear(1, 1), None) is None


@pytest.mark.parametrize("name", sorted(thefts.ATTACKS))
def test_every_attack_of_the_thefts_reports_the_copys_test_accuracy_through_its_spec(name, victim, owner_thief, digits):
    spec, thief = ATTACKS[name], owner_thief[1]
    assert spec.reports and "test" in spec.inputs()
    if spec.reports != ACCURACY:  # reports of their own: test_attack_registry checks them on every attack
        return
    copy, report = spec(victim, thief.x[:200], thief.y[:200], epochs=1, seed=3, test=digits.test)
    assert models.digest(copy) == models.digest(spec.fn(victim, thief.x[:200], thief.y[:200], epochs=1, seed=3))
    assert report.test_accuracy == models.accuracy(copy, digits.test)
    assert f"{report.test_accuracy:.2%}" in str(report)
    bare, unmeasured = spec(victim, thief.x[:200], thief.y[:200], epochs=1, seed=3)
    assert models.digest(bare) == models.digest(copy) and unmeasured.test_accuracy is None and str(unmeasured) == ""
