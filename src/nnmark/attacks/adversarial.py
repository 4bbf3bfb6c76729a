"""Adversarial training of a stolen model: fine-tune it on PGD adversarial examples of the thief's data.

Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards deep learning models resistant to adversarial attacks"
(ICLR 2018), https://arxiv.org/abs/1706.06083: training minimises the loss on the worst point of the L-inf ball
of radius eps around each input, found by PGD-k: a random start in the ball, then k steps

    x^{t+1} = Proj_{B(x, eps) ∩ [0, 1]^d} (x^t + alpha sign(grad_x L(theta, x^t, y)))

(their MNIST setting: eps 0.3, alpha 0.01, k 40). A removal attack on ownership marks (Lukas et al., "SoK: how
robust is image classification deep neural network watermarking?", S&P 2022): adversarial training moves the
decision boundary, where fingerprints and boundary watermarks live.

Choices: PGD runs in pixel space [0, 1] on the model in eval mode (BatchNorm statistics move only in the
training steps); each training step crafts the batch's adversarial examples against the current weights, then
takes one Adam step (``lr``, cosine decay, ``models.training.fit``) on (1 - ``clean_weight``) * CE(adversarial)
+ ``clean_weight`` * CE(clean); 0 is Madry's pure adversarial training. Training starts from the stolen weights.

Inputs: x (N, C, H, W) float32 in [0, 1]; y (N,) int64 in [0, K). Returns a new model in eval mode and an
:class:`AdversarialReport`; the input model is untouched; the same seed gives the same weights.

Example::

    robust, report = adversarial_train(model, thief.x, thief.y, eps=0.1, steps=10, epochs=5, test=ds.test)
    report.robust_accuracy   # accuracy on PGD examples of the test split
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnmark.attacks.measure import split_accuracy
from nnmark.data import Split
from nnmark.attacks.modes import check_labelled
from nnmark.attacks.registry import register_attack
from nnmark.errors import ArgumentError
from nnmark.models.training import DEFAULT_BATCH_SIZE, accuracy, device_of, fit

EPS = 0.3
STEP_SIZE = 0.01
STEPS = 40
EPOCHS = 5
LR = 1e-3
CLEAN_WEIGHT = 0.0
EVAL_BATCH = 500
"""Images per PGD call when the report measures the test split."""


@dataclass(frozen=True)
class AdversarialReport:
    """What ``adversarial_train`` measured on the test split (both None without one).

    Attributes:
        test_accuracy: the copy's accuracy on clean test images.
        robust_accuracy: its accuracy on PGD examples (the training eps, step size and steps) of them.
    """

    test_accuracy: float | None
    robust_accuracy: float | None

    def __str__(self) -> str:
        if self.test_accuracy is None:
            return "adversarially trained"
        return f"test accuracy {self.test_accuracy:.2%}, under PGD {self.robust_accuracy:.2%}"


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
        gen: torch.Generator) -> torch.Tensor:
    """PGD-k adversarial examples of (x, y) against ``model`` (eval mode, restored afterwards): Madry et al. eq. above.

    The random start is drawn from ``gen``; only input gradients are taken (no parameter gets a gradient).
    """
    was_training = model.training
    model.eval()
    start = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps
    x_adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.minimum(torch.maximum(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    return x_adv.detach()


def robust_accuracy(model: nn.Module, split: object, *, eps: float, step_size: float, steps: int,
                    seed: int = 0) -> float:
    """``model``'s accuracy on PGD-k examples of ``split`` (``.x``, ``.y``), crafted against it in batches."""
    gen = torch.Generator().manual_seed(seed)
    device = device_of(model)
    correct = 0
    for xb, yb in zip(split.x.split(EVAL_BATCH), split.y.split(EVAL_BATCH)):
        x_adv = pgd(model, xb.to(device), yb.to(device), eps=eps, step_size=step_size, steps=steps, gen=gen)
        correct += round(accuracy(model, Split(x_adv, yb)) * len(yb))
    return correct / len(split.y)


@register_attack("adversarial", summary="Adversarial training (Madry et al. PGD-k): fine-tune on PGD examples of the "
                 "thief's data.", applies_to="any differentiable classifier; needs attacker data", data="attacker",
                 reports=True)
def adversarial_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = EPS,
    step_size: float = STEP_SIZE,
    steps: int = STEPS,
    clean_weight: float = CLEAN_WEIGHT,
    epochs: int = EPOCHS,
    lr: float = LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    test: object | None = None,
) -> tuple[nn.Module, AdversarialReport]:
    """Return a copy of ``model`` adversarially trained on (x, y), and an :class:`AdversarialReport`.

    Args:
        x: the thief's images (N, C, H, W) in [0, 1]; y: their labels (N,) int64.
        eps: radius of the L-inf ball, in [0, 1] pixel units.
        step_size: alpha, the PGD step (sign of the gradient), > 0.
        steps: k, PGD steps per training batch (0: the random start only).
        clean_weight: share in [0, 1] of the clean images' loss (0: adversarial examples only, as Madry et al.).
        epochs: passes over (x, y).
        lr: Adam learning rate (cosine decay to 0), > 0.
        batch_size: images per step.
        seed: seeds the PGD starts and the minibatch order.
        test: a labelled split for the clean and PGD accuracies in the report.
    """
    if not 0 <= eps <= 1 or not step_size > 0 or steps < 0 or not 0 <= clean_weight <= 1:
        raise ArgumentError("need eps in [0, 1], step_size > 0, steps >= 0 and clean_weight in [0, 1]; got "
                            f"{eps}, {step_size}, {steps}, {clean_weight}")
    check_labelled(model, x, y)
    attacked = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)

    def adversarial_loss(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        x_adv = pgd(m, xb, yb, eps=eps, step_size=step_size, steps=steps, gen=gen)
        loss = F.cross_entropy(m(x_adv), yb)
        return loss if clean_weight == 0 else (1 - clean_weight) * loss + clean_weight * F.cross_entropy(m(xb), yb)

    fit(attacked, x, y, lr=lr, epochs=epochs, batch_size=batch_size, seed=gen, schedule="cosine",
        loss=adversarial_loss)
    robust = None if test is None else robust_accuracy(attacked, test, eps=eps, step_size=step_size, steps=steps,
                                                       seed=seed)
    return attacked, AdversarialReport(split_accuracy(attacked, test), robust)
