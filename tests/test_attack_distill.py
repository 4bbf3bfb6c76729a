"""Knowledge distillation (Hinton et al. 2015) as a removal attack: a fresh student copies the victim's function."""

import pytest
import torch
import torch.nn.functional as F

from nnmark import models
from nnmark.attacks import ATTACKS
from nnmark.attacks.distill import distill, distillation_loss, fresh_copy
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.errors import ArgumentError, DataError


def test_distilled_student_reaches_the_victims_accuracy_with_other_weights(lenet, mnist):
    att, held_out = attacker_data(mnist), natural_pool(mnist)
    before = models.digest(lenet)
    student = distill(lenet, att.x, att.y, seed=0)
    assert models.digest(lenet) == before and not student.training
    victim_acc, student_acc = models.accuracy(lenet, held_out), models.accuracy(student, held_out)
    # measured: victim 0.974, student 0.956 (500 attacker images, 30 epochs)
    assert student_acc >= victim_acc - 0.05
    assert models.accuracy(fresh_copy(lenet, 0), held_out) < 0.3  # it starts from scratch, not from the victim
    for (name, p), q in zip(lenet.named_parameters(), student.parameters()):
        assert (p - q).abs().max() > 0.01, name
    assert models.digest(distill(lenet, att.x[:100], att.y[:100], epochs=2, seed=1)) == models.digest(
        distill(lenet, att.x[:100], att.y[:100], epochs=2, seed=1))


def test_loss_is_hintons_soft_term_at_temperature_t_mixed_with_hard_labels():
    gen = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen), torch.arange(6) % 4
    T = 3.0
    p_t = F.softmax(t / T, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, dim=1))).sum(dim=1).mean()
    log_t = F.log_softmax(t / T, dim=1)
    assert torch.allclose(distillation_loss(s, log_t, y, T, 1.0), T**2 * kl)
    mixed = 0.7 * T**2 * kl + 0.3 * F.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, log_t, y, T, 0.7), mixed)
    assert distillation_loss(t, log_t, y, T, 1.0).abs() < 1e-6  # a student equal to the teacher pays nothing


def test_a_given_student_is_trained_as_a_copy(lenet, mnist):
    att = attacker_data(mnist)
    torch.manual_seed(1)
    given = models.build("lenet5", mnist.shape, mnist.num_classes, width=0.5)
    before = models.digest(given)
    student = distill(lenet, att.x[:200], att.y[:200], epochs=3, student=given)
    assert models.digest(given) == before and models.digest(student) != before
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in lenet.parameters())


def test_distill_refuses_bad_arguments_and_is_registered(lenet, mnist):
    att = attacker_data(mnist)
    x, y = att.x[:20], att.y[:20]
    for bad in ({"temperature": 0.0}, {"alpha": 1.5}, {"epochs": -1}, {"lr": 0.0}):
        with pytest.raises(ArgumentError):
            distill(lenet, x, y, **bad)
    with pytest.raises(DataError):
        distill(lenet, x, y + 10)
    assert ATTACKS["distill"].fn is distill and ATTACKS["distill"].data == "attacker"
