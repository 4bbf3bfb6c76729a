"""Knowledge distillation: a fresh student learns the stolen model's soft labels on the attacker's data.

Paper: Hinton, Vinyals, Dean, "Distilling the knowledge in a neural network" (2015),
https://arxiv.org/abs/1503.02531. The student is trained on the teacher's class probabilities at a
temperature T, p_T = softmax(z / T), with the loss (sec. 2)

    L = alpha * T^2 * KL(p_T(teacher) || p_T(student)) + (1 - alpha) * CE(softmax(z_student), y)

(the T^2 keeps the soft term's gradients at the scale of the hard one when T changes). A removal
attack on fingerprints and watermarks: MetaFinger (Yang et al., IJCAI 2022) and the watermark papers
(Adi et al. 2018; Wen et al. 2023) discuss it, since the student copies the function on the
attacker's distribution but not the weights, nor decision regions that this data never visits.

Choices: the student is a fresh model of the victim's architecture (a copy whose layers are
re-initialised by their ``reset_parameters``, torch's default initialisation, drawn from ``seed``), a
fresh zoo model ``student_arch`` (``models.build`` for the victim's input shape and classes, initialised
from ``seed``), or a given ``student`` (a copy of it is trained); the teacher's probabilities are
computed once, in eval mode; training is ``models.training.fit``: Adam at ``lr`` with cosine decay, all
layers, train mode, minibatches of ``batch_size`` in an order drawn from ``seed`` each epoch. alpha = 1
uses no labels.

Inputs: x (N, C, H, W) float32 in [0, 1]; y (N,) int64 in [0, K), K the victim's outputs.
Returns a new model in eval mode; the victim is untouched; the same seed gives the same weights.

Example::

    student = distill(model, attacker.x, attacker.y, temperature=4.0, epochs=30, seed=0)
    models.accuracy(student, dataset.test)   # close to the victim's
    vgg = distill(model, attacker.x, attacker.y, temperature=SOK_TEMPERATURE, student_arch="vgg11")
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnmark.attacks.backdoor import check_images
from nnmark.attacks.modes import output_classes
from nnmark.attacks.registry import ACCURACY, register_attack
from nnmark.data import validate
from nnmark.errors import ArgumentError
from nnmark.models import ARCHITECTURES, build, device_of, outputs
from nnmark.models.training import DEFAULT_BATCH_SIZE, DEFAULT_LR, EVAL_BATCH_SIZE, fit

SAME_ARCH = "same"
"""The student architecture that means the victim's own."""
Arch = Literal[(SAME_ARCH, *ARCHITECTURES)]  # type: ignore[valid-type]  # choices of an option
TEMPERATURE = 4.0
SOK_TEMPERATURE = 3.0
"""The temperature of the SoK's distillation attack (Lukas et al., "SoK: how robust is image classification deep
neural network watermarking?", S&P 2022)."""
STUDENT_ARCH = SAME_ARCH
ALPHA = 0.9
EPOCHS = 30


def soft_labels(model: nn.Module, x: torch.Tensor, temperature: float,
                batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """log p_T = log softmax(z / T) of ``model`` (in eval mode, restored afterwards) on ``x``: (N, K), on the model's
    device."""
    return F.log_softmax(outputs(model, x, batch_size) / temperature, dim=1)


def distillation_loss(student_logits: torch.Tensor, teacher_log_p: torch.Tensor, y: torch.Tensor, temperature: float,
                      alpha: float) -> torch.Tensor:
    """L = alpha T^2 KL(p_T teacher || p_T student) + (1 - alpha) CE(student, y), batch means (Hinton sec. 2)."""
    student_log_p = F.log_softmax(student_logits / temperature, dim=1)
    soft = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean") * temperature**2
    if alpha == 1:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, y)


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose layers are re-initialised (``reset_parameters``) from ``seed``, global RNG kept."""
    device = device_of(model)
    student = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in student.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return student.to(device)


def build_student(arch: str, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """A fresh zoo model ``arch`` (``models.build``) for ``input_shape`` and ``num_classes``, initialised from
    ``seed`` with the global RNG kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(arch, input_shape, num_classes)


def student_for(model: nn.Module, arch: str, x: torch.Tensor, seed: int) -> nn.Module:
    """A fresh student for ``model``: its own architecture re-initialised (``arch`` "same"), else the zoo's ``arch``
    built for the images ``x`` and ``model``'s K outputs, on ``model``'s device."""
    if arch == SAME_ARCH:
        return fresh_copy(model, seed)
    return build_student(arch, tuple(x.shape[1:]), output_classes(model, x), seed).to(device_of(model))


@register_attack("distill", summary="Knowledge distillation: train a fresh model on the victim's soft labels.",
                 applies_to="any classifier (the student: its architecture, a zoo one, or a given one); needs "
                 "attacker data", data="attacker", reports=ACCURACY)
def distill(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    alpha: float = ALPHA,
    epochs: int = EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    student_arch: Arch = STUDENT_ARCH,
    student: nn.Module | None = None,
) -> nn.Module:
    """Return a student trained to match ``model``'s soft labels on (x, y); ``model`` is untouched.

    Args:
        x: the attacker's images (N, C, H, W) in [0, 1]; y: their labels (N,) int64 (unused at alpha 1).
        temperature: T > 0, the softmax temperature of teacher and student in the soft term.
        alpha: weight in [0, 1] of the soft term; 1 - alpha weighs the hard-label cross-entropy.
        epochs: passes over (x, y).
        lr: Adam learning rate (cosine decay to 0), > 0.
        batch_size: images per step.
        seed: seeds the fresh student's initialisation and the minibatch order.
        student_arch: the student's architecture: the victim's own (same) or one of the zoo's.
        student: the model to train instead of a fresh student (a copy is trained).
    """
    if not temperature > 0 or not 0 <= alpha <= 1:
        raise ArgumentError(f"need temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
    if student is not None and student_arch != SAME_ARCH:
        raise ArgumentError("give a student or a student_arch, not both")
    check_images(x)
    teacher_log_p = soft_labels(model, x, temperature)
    validate(x, y, teacher_log_p.shape[1], source="attacker data")
    pupil = student_for(model, student_arch, x, seed) if student is None else copy.deepcopy(student)
    labels = y.to(teacher_log_p.device)

    def loss(m: nn.Module, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The fit targets are sample indices: each batch looks up its teacher probabilities and labels."""
        return distillation_loss(m(xb), teacher_log_p[idx], labels[idx], temperature, alpha)

    fit(pupil, x, torch.arange(len(x)), lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, schedule="cosine",
        loss=loss)
    return pupil
