"""Model extraction: a thief who can only ask the victim trains a copy on its answers.

Paper: Tramèr, Zhang, Juels, Reiter, Ristenpart, "Stealing machine learning models via prediction APIs"
(USENIX Security 2016); Orekondy, Schiele, Fritz, "Knockoff nets: stealing functionality of black-box models"
(CVPR 2019): the thief sends its own images (in-distribution, augmented, or from another distribution) to the
victim's API and trains a model of its choice on the answers, top-1 labels or probability vectors. A removal
attack on ownership marks: the copy learns the victim's function where the thief's queries go, nothing else.

Steps:
    1. ``query_set``: ``queries`` inputs: the thief's images ``x`` in a seeded order (repeated when the budget
       exceeds them), or uniform noise of their shape (``inputs="uniform"``); then, if ``augment`` says so,
       every one is augmented (a random shift of up to ``SHIFT`` pixels and a horizontal flip with chance 1/2,
       or Gaussian noise of std ``NOISE_STD``, clipped to [0, 1]).
    2. The oracle answers all of them in one call (``labels`` or ``probabilities``), so a budget that cannot
       pay for them is refused (``QueryBudgetExceeded``) before anything is asked.
    3. A fresh student (the victim's architecture or a zoo one) trains on the answers with ``models.training.fit``:
       Adam at ``lr`` with cosine decay, cross-entropy on the labels or on the probability vectors.

``extract_from(oracle, x, student, ...)`` is the core and works against any ``nnmark.oracles.Oracle`` (an
endpoint too); the registered ``extract`` attack wraps a local model in a ``TorchOracle``, and ``extract_through``
(its registered ``oracle``: ``nnmark attack extract --endpoint``) takes ``extract``'s options against any oracle. The
labels ``y`` the thief may hold are never used.

Example::

    copy, report = extract(model, thief.x, thief.y, queries=10_000, augment="crop-flip", test=ds.test)
    report.queries, report.test_accuracy
"""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnmark.attacks.backdoor import check_images
from nnmark.attacks.distill import SAME_ARCH, STUDENT_ARCH, Arch, build_student, student_for
from nnmark.attacks.measure import split_accuracy
from nnmark.attacks.modes import output_classes
from nnmark.attacks.registry import register_attack
from nnmark.errors import ArgumentError, ModelError
from nnmark.models.training import DEFAULT_BATCH_SIZE, DEFAULT_LR, cross_entropy, device_of, fit
from nnmark.oracles import Oracle, TorchOracle
from nnmark.oracles.local import DEFAULT_BATCH_SIZE as QUERY_BATCH_SIZE

Answers = Literal["labels", "probabilities"]
Augment = Literal["none", "crop-flip", "noise"]
Inputs = Literal["own", "uniform"]
ANSWERS = "labels"
AUGMENT = "none"
INPUTS = "own"
QUERIES = None
EPOCHS = 30
SHIFT = 2
"""Pixels a crop-flip augmentation shifts an image by, at most, in each direction (zero padding)."""
NOISE_STD = 0.1
"""Standard deviation of the noise augmentation, in [0, 1] pixel units."""
MAX_QUERY_BYTES = 1 << 32
"""The most bytes the query images may take together (4 GiB: 1.3 million 28x28 images)."""


@dataclass(frozen=True)
class ExtractionReport:
    """What ``extract_from`` spent and got.

    Attributes:
        queries: queries the oracle counted for the attack.
        answers: "labels" or "probabilities".
        test_accuracy: the copy's accuracy on the test split (None without one).
    """

    queries: int
    answers: str
    test_accuracy: float | None

    def __str__(self) -> str:
        acc = "" if self.test_accuracy is None else f", copy's test accuracy {self.test_accuracy:.2%}"
        return f"extracted from {self.queries} queries answered with {self.answers}{acc}"


def _shift_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to ``SHIFT`` pixels (zero padding) and flipped left-right with chance 1/2."""
    n, _, h, w = x.shape
    padded = F.pad(x, (SHIFT,) * 4)
    dy, dx = (torch.randint(0, 2 * SHIFT + 1, (n,), generator=gen) for _ in range(2))
    out = torch.empty_like(x)
    for oy in range(2 * SHIFT + 1):  # one slice per offset, not per image
        for ox in range(2 * SHIFT + 1):
            at = (dy == oy) & (dx == ox)
            out[at] = padded[at, :, oy:oy + h, ox:ox + w]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def query_set(x: torch.Tensor, queries: int, *, inputs: str = INPUTS, augment: str = AUGMENT,
              gen: torch.Generator) -> torch.Tensor:
    """The ``queries`` images the thief sends (step 1 of the module docstring), drawn from ``gen``."""
    if inputs == "uniform":
        base = torch.rand((queries, *x.shape[1:]), generator=gen)
    else:
        rounds = math.ceil(queries / len(x))
        base = x[torch.cat([torch.randperm(len(x), generator=gen) for _ in range(rounds)])[:queries]]
    if augment == "crop-flip":
        return _shift_flip(base, gen)
    if augment == "noise":
        return (base + NOISE_STD * torch.randn(base.shape, generator=gen)).clamp(0, 1)
    return base


def soft_cross_entropy(model: nn.Module, xb: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model(xb)`` against the probability vectors ``pb``: -sum_k p_k log q_k."""
    return -(pb * F.log_softmax(model(xb), dim=1)).sum(dim=1).mean()


def _check(oracle: Oracle, x: torch.Tensor, student: nn.Module, queries: int, options: dict[str, str]) -> None:
    """Refuse bad options, more query bytes than ``MAX_QUERY_BYTES``, and a student that cannot answer for K."""
    check_images(x)
    for name, kind in (("answers", Answers), ("augment", Augment), ("inputs", Inputs)):
        if options[name] not in typing.get_args(kind):
            raise ArgumentError(f"{name} must be one of {', '.join(typing.get_args(kind))}, got {options[name]!r}")
    if queries < 1 or queries * x[0].numel() * x.element_size() > MAX_QUERY_BYTES:
        raise ArgumentError(f"queries must be >= 1 and take at most {MAX_QUERY_BYTES:,} bytes, got {queries:,} of "
                            f"{tuple(x.shape[1:])}")
    k = output_classes(student, x)
    if k != oracle.num_classes:
        raise ModelError(f"the student has {k} outputs but the victim answers for {oracle.num_classes} classes")


def extract_from(
    oracle: Oracle,
    x: torch.Tensor,
    student: nn.Module,
    *,
    queries: int | None = QUERIES,
    answers: str = ANSWERS,
    augment: str = AUGMENT,
    inputs: str = INPUTS,
    epochs: int = EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    test: object | None = None,
) -> tuple[nn.Module, ExtractionReport]:
    """Train a copy of ``student`` on ``oracle``'s answers to the thief's queries; return it and the report.

    ``x`` are the thief's images (N, C, H, W) in [0, 1] of the oracle's input shape; ``queries`` defaults to N.
    The options are those of ``extract``; ``test`` is a labelled split for the copy's accuracy.
    """
    n = len(x) if queries is None else queries
    _check(oracle, x, student, n, {"answers": answers, "augment": augment, "inputs": inputs})
    gen = torch.Generator().manual_seed(seed)
    sent = query_set(x, n, inputs=inputs, augment=augment, gen=gen)
    before = oracle.queries
    targets = oracle.labels(sent) if answers == "labels" else oracle.probabilities(sent)
    spent = oracle.queries - before
    thief = copy.deepcopy(student)
    loss = cross_entropy if answers == "labels" else soft_cross_entropy
    fit(thief, sent, targets, lr=lr, epochs=epochs, batch_size=batch_size, seed=gen, schedule="cosine", loss=loss)
    return thief, ExtractionReport(spent, answers, split_accuracy(thief, test))


def extract_through(oracle: Oracle, x: torch.Tensor, y: torch.Tensor, *, student_arch: str = STUDENT_ARCH,
                    seed: int = 0, **options) -> tuple[nn.Module, ExtractionReport]:
    """``extract`` against any ``oracle`` (an endpoint too), with its options: the copy is a fresh zoo model
    ``student_arch`` for the oracle's input shape and classes, refused as "same" before any query."""
    if student_arch == SAME_ARCH:
        raise ArgumentError('student_arch "same" names the victim\'s architecture, which an oracle does not show: '
                            'name a zoo one')
    student = build_student(student_arch, oracle.input_shape, oracle.num_classes, seed)
    return extract_from(oracle, x, student, seed=seed, **options)


@register_attack("extract", summary="Model extraction: train a fresh model on the victim's answers to the thief's "
                 "own queries.", applies_to="any classifier (through an oracle; the copy: its architecture or a zoo "
                 "one); needs the thief's images (their labels are not used)", data="attacker", reports=True,
                 oracle=extract_through)
def extract(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    queries: int | None = QUERIES,
    answers: Answers = ANSWERS,
    augment: Augment = AUGMENT,
    inputs: Inputs = INPUTS,
    student_arch: Arch = STUDENT_ARCH,
    epochs: int = EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    test: object | None = None,
) -> tuple[nn.Module, ExtractionReport]:
    """Return a copy of ``model`` extracted through a local oracle over it (on its device, asked in micro-batches of
    ``QUERY_BATCH_SIZE``), and an :class:`ExtractionReport`.

    Args:
        x: the thief's images (N, C, H, W) in [0, 1]; y: their labels, unused (the victim labels the queries).
        queries: images sent to the victim, each counted (default: one per image of x).
        answers: what the victim returns: top-1 labels, or probability vectors.
        augment: how each query is altered: none, a random shift and flip (crop-flip), or Gaussian noise.
        inputs: the thief's own images, or uniform noise of their shape (out of distribution).
        student_arch: the copy's architecture: the victim's own (same) or one of the zoo's.
        epochs: passes over the answered queries.
        lr: Adam learning rate (cosine decay to 0), > 0.
        batch_size: queries per training step.
        seed: seeds the queries, the copy's initialisation and the minibatch order.
        test: a labelled split for the copy's test accuracy in the report.
    """
    check_images(x)
    was_training = model.training
    student = student_for(model, student_arch, x, seed)
    try:
        victim = TorchOracle(model, tuple(x.shape[1:]), batch_size=QUERY_BATCH_SIZE, device=device_of(model))
        return extract_from(victim, x, student, queries=queries, answers=answers, augment=augment, inputs=inputs,
                            epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, test=test)
    finally:
        model.train(was_training)  # the oracle put the victim in eval mode
