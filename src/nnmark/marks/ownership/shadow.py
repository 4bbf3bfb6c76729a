"""Shadow-model pools: models trained or derived on the owner's side, cached on disk, built in parallel.

MetaFinger (Yang et al., IJCAI 2022, sec. 4.1 "meta-data generation") needs many shadow models:

- a *negative* model is trained from scratch on the same task with its own seed
  (``ShadowSpec(arch, data, seed)``);
- an *augmented* model is a base model plus eq. 1 noise, param += N(0, std(param) / alpha) layer by
  layer (``nnmark.attacks.relative_weight_noise``), then fine-tuned to recover accuracy
  (``ShadowSpec(..., augment_alpha=alpha, augment_seed=s)``). The base is the negative model of the same
  (arch, data, seed, epochs), or, when ``base_digest`` is set, a model given by the caller (the owner's
  source model, never trained here), identified by its ``nnmark.models.digest``;
- a *variant* is a base model after one of the thief's attacks (``VARIANTS``: distillation, extraction, RTAL,
  prune + fine-tune at 70% or 90%, noise + fine-tune, PGD adversarial training; ``ShadowSpec(..., variant=name,
  augment_seed=s)``), run by the owner on its own training split. Of the source, it is a positive that looks like a
  stolen copy; of a negative model, a negative that looks like an independent thief's copy
  (``PoolLayout.positive_variants`` / ``negative_variants``; the thief-aware pools, ``PoolLayout.thief_aware``, add
  one RTAL, prune, noise, distilled and extracted copy of the source, each a positive train model only; the wide
  ones, ``PoolLayout.thief_wide``, also students of other architectures and a 90%-pruned copy).

The architecture is a zoo name or the user's own ``package.module:factory`` (``nnmark.models.load_any``);
a spec with a ``card`` (required for a factory) trains on ``data`` converted to the card's input shape
(``data.load_for``) and keeps every model in pixel space [0, 1] behind the card's normalisation
(``models.card.pixel_model``), so eq. 1 noise and the fine-tune act on the real weights, and
``metafinger.create`` can query the pool with pixels as it queries the source.

Choices: the fine-tune after the noise is ``finetune_mode(..., mode="FTAL")`` (SGD, momentum 0.9,
lr 0.01, all layers) for ``finetune_epochs`` passes over the *owner's* training split of ``data`` (the
owner has it; the paper only says "fine-tunes the model to achieve high accuracy"). A from-scratch model is ``models.build`` (or the factory) under
``torch.manual_seed(seed)`` then ``models.train(..., seed=seed)``, so a spec gives the same weights
every time on one machine.

Each model is cached as ``<cache_dir>/<arch>-<hash>.safetensors`` with a ``.json`` beside it (the spec,
test accuracy, seconds), in the form ``load_any`` reads: a zoo model as an nnmark checkpoint
(``nnmark.models.save``), a factory model as the safetensors state dict its factory loads strictly, with
the card (``--model package.module:factory --weights FILE``). ``hash`` is the SHA-256 of the spec's
canonical JSON, so a second ``build_pool`` over the same specs trains nothing. Missing models are
built by ``build_task``, from-scratch bases first, then the augmentations that start from them, in
this process, in worker processes (``concurrent.futures.ProcessPoolExecutor``, spawn context, one torch
thread each, each ending itself once the driver is gone or interrupted: ``_exit_when_cut``) or as Ray tasks
(``executor="ray"``, ``pip install 'nnmark[ray]'``, imported only then).
A task is given no path: it takes the spec's JSON, the base model's bytes (a cache file's) and the data
(a bundled dataset's name, else the tensors) and returns the new model's bytes (trained on the pool's ``device``,
written from the CPU: the cache is the same whatever trained it), so it runs on any
node of a cluster without a shared file system (Ray passes the inputs through its object store, each
base and dataset once, and a factory's module as the job's ``py_modules``). The driver alone reads and writes
the cache, each file atomically. ``pool_specs`` lays out MetaFinger's positive and negative pools
(``PoolLayout``); ``pool_specs_for`` does it for a source model from ``load_any``.

Example::

    specs = [ShadowSpec("lenet5", "digits", seed=s) for s in (1, 2)]
    pool = build_pool(specs, cache_dir=default_cache_dir(), workers=2)

    loaded = load_any("mypkg.nets:small_cnn", weights="net.safetensors", input_shape=(3, 32, 32),
                      normalize="imagenet")
    specs = pool_specs_for(loaded, "mnist5k")        # digits converted to RGB 32x32 in every worker
    pool = build_pool([s for group in specs.values() for s in group], cache_dir=default_cache_dir(),
                      base=loaded.model)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm as tqdm_std
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark._io import atomic_write_bytes
from nnmark.attacks import finetune_mode, modes, prune_finetune, relative_weight_noise
from nnmark.attacks.adversarial import adversarial_train
from nnmark.attacks.distill import SAME_ARCH, SOK_TEMPERATURE, distill
from nnmark.attacks.extract import extract
from nnmark.attacks.noise import noise_finetune
from nnmark.errors import ArgumentError, ModelError, NnmarkError
from nnmark.models.card import ModelCard, pixel_model, unwrap
from nnmark.models.sources import FACTORY_SPEC, SOURCES, LoadedModel, import_factory, load_any
from nnmark.models.training import (
    DEFAULT_BATCH_SIZE, MicroBatch, check_micro_batch, micro_batches, resolve_micro_batch,
)

DEFAULT_EPOCHS = 8
DEFAULT_FINETUNE_EPOCHS = 2
EXECUTORS = ("process", "serial", "ray")
DEFAULT_NEGATIVES = 4
DEFAULT_VAL_NEGATIVES = 2
DEFAULT_AF = 3
DEFAULT_ALPHA = 3.0
LARGEST_BATCH = max(DEFAULT_BATCH_SIZE, modes.DEFAULT_BATCH_SIZE)
"""The largest training batch of a pool's models (from scratch 32; FTAL and the thief's fine-tunes 64)."""
DEFAULT_WORKERS = 2
DEFAULT_RAY_TIMEOUT = None
DEFAULT_VARIANT_COPIES = 2
VARIANT_SEEDS = 1_000_000
"""How far above the source's seed the variants' seeds start. A distilled or extracted student is initialised from
its seed exactly as a from-scratch model of that seed is, so the variants' seeds stay clear of every from-scratch
seed of the pools: no student starts from the initial weights of the source or of a negative model."""
VARIANT_PRUNE = 0.7
"""The share of each layer's weights the "prune" variant sets to zero before its fine-tune."""
VARIANT_HARD_PRUNE = 0.9
"""The share the "prune90" variant prunes: the strongest pruning ``bench ownership``'s thief applies."""
VARIANT_NOISE_ALPHA = 1.0
"""Eq. 1's alpha of the "noise" variant (std(param) / 1: the thief's strongest noise that still fine-tunes back)."""
VARIANT_PGD_EPS = 0.1
"""The PGD radius of the "adversarial" variant in pixel units (the owner does not know the thief's): 5 steps of
eps / 4, half the loss on clean images, as ``bench ownership``'s thief trains its copy."""
BUNDLED_DATA = ("mnist5k", "digits")
"""Datasets that every node has (they ship with installed packages): tasks get their name, not their tensors."""
_INSTALLED = tuple(dict.fromkeys(os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")))
"""Where installed distributions live: a factory module from there is installed on every node, not shipped to Ray."""

Task = tuple[str, Any, Any]
"""A task's arguments: the spec's JSON, the base (model bytes or None) and the data (a name or a Dataset),
the last two possibly as Ray object references."""
Result = tuple[bytes, str]
"""A task's result: the model's bytes (``_model_bytes``) and its JSON record."""


def _distill(spec: ShadowSpec, base: nn.Module, train: data.Split) -> nn.Module:
    """Soft labels only (alpha 1) at the SoK's T = 3, into a fresh ``spec.student``, for ``spec.epochs``."""
    return distill(base, train.x, train.y, temperature=SOK_TEMPERATURE, alpha=1.0, student_arch=spec.student,
                   epochs=spec.epochs, seed=spec.augment_seed)


def _extract(spec: ShadowSpec, base: nn.Module, train: data.Split) -> nn.Module:
    """The base's top-1 labels on noisy copies of the images (so its answers, not the true labels, on images it
    never trained on), learnt by a fresh ``spec.student`` for ``spec.epochs``."""
    return extract(base, train.x, train.y, answers="labels", augment="noise", student_arch=spec.student,
                   epochs=spec.epochs, seed=spec.augment_seed)[0]


def _rtal(spec: ShadowSpec, base: nn.Module, train: data.Split) -> nn.Module:
    """RTAL: the last layer re-initialised, then every layer fine-tuned for ``spec.finetune_epochs``."""
    return finetune_mode(base, train.x, train.y, mode="RTAL", epochs=spec.finetune_epochs, seed=spec.augment_seed)


def _pruned(fraction: float) -> Callable[[ShadowSpec, nn.Module, data.Split], nn.Module]:
    """The variant that prunes ``fraction`` of each layer's weights, then fine-tunes with the mask kept."""
    def variant(spec: ShadowSpec, base: nn.Module, train: data.Split) -> nn.Module:
        return prune_finetune(base, train.x, train.y, fraction=fraction, epochs=spec.finetune_epochs,
                              seed=spec.augment_seed)
    return variant


def _noise(spec: ShadowSpec, base: nn.Module, train: data.Split) -> nn.Module:
    """Eq. 1 noise at ``VARIANT_NOISE_ALPHA``, then FTAL for ``spec.finetune_epochs``."""
    return noise_finetune(base, train.x, train.y, alpha=VARIANT_NOISE_ALPHA, epochs=spec.finetune_epochs,
                          seed=spec.augment_seed)


def _adversarial(spec: ShadowSpec, base: nn.Module, train: data.Split) -> nn.Module:
    """PGD adversarial training of the base at ``VARIANT_PGD_EPS`` for ``spec.finetune_epochs``."""
    eps = VARIANT_PGD_EPS
    return adversarial_train(base, train.x, train.y, eps=eps, step_size=eps / 4, steps=5, clean_weight=0.5,
                             epochs=spec.finetune_epochs, seed=spec.augment_seed)[0]


VARIANTS: dict[str, Callable[[ShadowSpec, nn.Module, data.Split], nn.Module]] = {
    "distill": _distill, "extract": _extract, "rtal": _rtal,
    "prune": _pruned(VARIANT_PRUNE), "prune90": _pruned(VARIANT_HARD_PRUNE),
    "noise": _noise, "adversarial": _adversarial,
}
"""The thief's attacks a variant spec names (``"distill"``, or ``"distill:vgg11"`` for a student of another zoo
architecture; likewise ``"extract"``), run on the owner's training split: each takes the spec, its base and the
split, and returns the attacked model."""
STUDENT_VARIANTS = ("distill", "extract")
"""The variants that train a fresh student, which may be of another zoo architecture."""


def students(*archs: str) -> tuple[str, ...]:
    """The student variants (``STUDENT_VARIANTS``) into each zoo architecture of ``archs``, in that order."""
    return tuple(f"{kind}:{arch}" for arch in archs for kind in STUDENT_VARIANTS)


def check_variant(name: str) -> None:
    """ArgumentError unless ``name`` is a ``VARIANTS`` name, or a ``STUDENT_VARIANTS`` one with ``:ARCH`` (a zoo
    architecture)."""
    kind, colon, student = name.partition(":") if isinstance(name, str) else (name, "", "")
    if kind not in VARIANTS or (colon and (kind not in STUDENT_VARIANTS or student not in models.ARCHITECTURES)):
        raise ArgumentError(f"unknown shadow variant {name!r}; choose one of {', '.join(VARIANTS)}, or "
                            f"{' or '.join(STUDENT_VARIANTS)}:ARCH with ARCH one of {', '.join(models.ARCHITECTURES)}")


@dataclass(frozen=True)
class ShadowSpec:
    """One shadow model, as JSON-able fields.

    Args:
        arch: a ``nnmark.models.ARCHITECTURES`` name, or a ``package.module:factory`` (the user's own model,
            ``nnmark.models.load_any``), which needs ``card``.
        data: a ``nnmark.data.load`` spec; the task (and the owner's fine-tuning data).
        seed: from-scratch seed (initialisation and minibatch order); with ``base_digest`` a label only.
        augment_alpha: eq. 1's alpha (> 0) for an augmented model; None for a from-scratch one.
        augment_seed: seeds the eq. 1 noise and the fine-tune, or the variant's attack; set exactly when
            ``augment_alpha`` or ``variant`` is.
        epochs: from-scratch training epochs.
        finetune_epochs: FTAL epochs after the noise.
        base_digest: None (augment the from-scratch model of this spec) or the digest of a given base model:
            ``models.digest`` of its stored state dict, outside any ``Normalized`` wrapper (``LoadedModel.digest``).
        card: None (a zoo model on ``data`` as it loads), or the model's ``ModelCard`` (or its ``to_dict()``):
            ``data`` is converted to its input shape (``data.load_for``) and the model is trained and used in pixel
            space [0, 1] behind its normalisation (``models.card.pixel_model``). Written into the JSON (and so the
            cache name) only when set.
        variant: None, or the thief's attack (a ``VARIANTS`` name, ``check_variant``) run on the base instead of
            eq. 1; its epochs are ``epochs`` for a student (distill, extract), else ``finetune_epochs``. Written into
            the JSON only when set; a student of another architecture only without a card.
        micro_batch: None (whole training batches), or the most images of a training step's forward and backward
            pass (``models.training.micro_batches``: gradients summed over the chunks, peak memory bounded by it; a
            model with BatchNorm trains to slightly different weights). Written into the JSON only when set.
    """

    arch: str
    data: str
    seed: int
    augment_alpha: float | None = None
    augment_seed: int | None = None
    epochs: int = DEFAULT_EPOCHS
    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS
    base_digest: str | None = None
    card: ModelCard | None = None
    variant: str | None = None
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        if self.card is not None and not isinstance(self.card, ModelCard):
            object.__setattr__(self, "card", ModelCard.from_dict(self.card))
        if self.factory:
            if self.card is None:
                raise ArgumentError(f"a factory model ({self.arch}) needs its card: input shape, classes, "
                                    "normalisation")
        elif self.arch not in models.ARCHITECTURES:
            raise ModelError(f"unknown architecture {self.arch!r}; choose one of {', '.join(models.ARCHITECTURES)} "
                             "or a package.module:factory")
        if not isinstance(self.data, str) or not self.data:
            raise ArgumentError(f"data must be a dataset spec string, got {self.data!r}")
        for name in ("seed", "epochs", "finetune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArgumentError(f"{name} must be an integer, got {value!r}")
        if self.epochs < 1 or self.finetune_epochs < 0:
            raise ArgumentError(f"need epochs >= 1 and finetune_epochs >= 0, got {self.epochs}, {self.finetune_epochs}")
        check_micro_batch(self.micro_batch, auto=False)
        if self.variant is not None:
            check_variant(self.variant)
            if self.augment_alpha is not None:
                raise ArgumentError("a spec is an eq. 1 augmentation (augment_alpha) or a variant, not both")
            if self.card is not None and self.student != SAME_ARCH:
                raise ArgumentError(f"variant {self.variant!r} trains another architecture, which a model with a "
                                    "card cannot be stored as: students of other families (thief-wide pools) need a "
                                    "zoo checkpoint trained on the data without a normalisation")
        if (self.augment_alpha is None and self.variant is None) != (self.augment_seed is None):
            raise ArgumentError("augment_seed is given exactly with augment_alpha or a variant")
        if self.augment_seed is not None and (isinstance(self.augment_seed, bool)
                                              or not isinstance(self.augment_seed, int)):
            raise ArgumentError(f"augment_seed must be an integer, got {self.augment_seed!r}")
        if self.augment_alpha is not None:
            alpha = self.augment_alpha
            numeric = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
            if not (numeric and math.isfinite(alpha) and alpha > 0):
                raise ArgumentError(f"augment_alpha must be a finite number > 0, got {alpha!r}")
            object.__setattr__(self, "augment_alpha", float(alpha))
        if self.base_digest is not None:
            if not self.augmented:
                raise ArgumentError("base_digest is only meaningful for an augmented spec or a variant "
                                    "(a given model is not trained)")
            if not (isinstance(self.base_digest, str) and re.fullmatch(r"[0-9a-f]{64}", self.base_digest)):
                raise ArgumentError(f"base_digest must be 64 lowercase hex digits, got {self.base_digest!r}")

    @property
    def augmented(self) -> bool:
        """Whether the model is derived from a base (eq. 1 or a variant), not trained from scratch."""
        return self.augment_alpha is not None or self.variant is not None

    @property
    def student(self) -> str:
        """A variant's student architecture: a zoo name after ``:``, else "same" (the base's)."""
        _, _, arch = (self.variant or "").partition(":")
        return arch or SAME_ARCH

    @property
    def model_arch(self) -> str:
        """The architecture of the model itself: a variant's other student's, else ``arch``."""
        return self.arch if self.student == SAME_ARCH else self.student

    @property
    def factory(self) -> bool:
        """Whether ``arch`` is a ``package.module:factory`` (else a zoo architecture)."""
        return FACTORY_SPEC.fullmatch(self.arch) is not None

    def base(self) -> ShadowSpec:
        """The from-scratch spec this one augments (only for specs without ``base_digest``)."""
        return dataclasses.replace(self, augment_alpha=None, augment_seed=None, base_digest=None, variant=None)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact); ``card`` as ``ModelCard.to_dict()``; ``card``, ``variant`` and
        ``micro_batch`` left out when None (so the specs of earlier releases keep their cache names)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("card", "variant", "micro_batch"):
            if fields[name] is None:
                del fields[name]
        if self.card is not None:
            fields["card"] = self.card.to_dict()
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ShadowSpec:
        return cls(**json.loads(text))

    def cache_name(self) -> str:
        """``<model_arch>-<first 16 hex of SHA-256(to_json())>.safetensors`` (a factory's ``:`` written as ``-``)."""
        name = self.model_arch.replace(":", "-")
        return f"{name}-{hashlib.sha256(self.to_json().encode()).hexdigest()[:16]}.safetensors"


@dataclass(frozen=True)
class PoolLayout:
    """MetaFinger's meta-data (sec. 4.1): how many shadow models of each kind, and how they are made.

    Attributes:
        negatives: negative train families (a from-scratch model and its ``af`` augmentations each).
        val_negatives: independent from-scratch negative validation models.
        af: the augmentation factor: eq. 1 copies (then fine-tuned) per model.
        alpha: eq. 1's alpha (the noise is std(param) / alpha).
        epochs: from-scratch training epochs (and a distilled or extracted variant's).
        finetune_epochs: FTAL epochs after the noise (and an RTAL, prune or noise variant's fine-tune, an adversarial
            variant's PGD training).
        positive_variants: ``VARIANTS`` names: the thief's attacks on the source, ``variant_copies`` each (its
            seeds 0..), as positives; the paper's pools have none.
        negative_variants: ``VARIANTS`` names: the same attacks on independent models, as negatives: one of each
            per train family, and one of each per name on a from-scratch teacher of its own for validation.
        variant_copies: copies of each positive variant; a third of them, rounded, validate (as with ``af``), so
            1 makes the variants train only: meta-training pulls X toward them, the screen does not demand them.
        micro_batch: every shadow model's ``ShadowSpec.micro_batch`` (None: whole training batches).
    """

    negatives: int = DEFAULT_NEGATIVES
    val_negatives: int = DEFAULT_VAL_NEGATIVES
    af: int = DEFAULT_AF
    alpha: float = DEFAULT_ALPHA
    epochs: int = DEFAULT_EPOCHS
    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS
    positive_variants: tuple[str, ...] = ()
    negative_variants: tuple[str, ...] = ()
    variant_copies: int = DEFAULT_VARIANT_COPIES
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        if self.negatives < 1 or self.val_negatives < 1 or self.af < 0 or self.variant_copies < 1:
            raise ArgumentError(f"need negatives >= 1, val_negatives >= 1, af >= 0 and variant_copies >= 1, "
                                f"got {self.negatives}, {self.val_negatives}, {self.af}, {self.variant_copies}")
        for name in ("positive_variants", "negative_variants"):
            names = getattr(self, name)
            if isinstance(names, str):
                raise ArgumentError(f"{name} must be a sequence of variant names, got the string {names!r}")
            for variant in names:
                check_variant(variant)
            object.__setattr__(self, name, tuple(dict.fromkeys(names)))

    def thief_aware(self) -> PoolLayout:
        """This layout with the thief-aware pools' variants: ``THIEF_POSITIVES``, ``THIEF_VARIANT_COPIES`` each (so
        they only train), and ``THIEF_NEGATIVES``."""
        return dataclasses.replace(self, positive_variants=THIEF_POSITIVES, negative_variants=THIEF_NEGATIVES,
                                   variant_copies=THIEF_VARIANT_COPIES)

    def thief_wide(self, arch: str) -> PoolLayout:
        """The thief-aware layout plus students of the other architectures and a harder prune: a distilled and an
        extracted student of each ``WIDE_STUDENTS`` architecture but the source's ``arch``, then
        ``WIDE_POSITIVES``; one train copy each. The pool study's design "+ students of every architecture and prune
        90%, train only": on its LeNet-5 victims it matches 10, 13 and 10 of 13 copies with no false claim (the
        thief-aware pools 9, 11, 7), label extraction into VGG-11 and prune 90% + fine-tune on every seed, for 5.2-5.4
        times their training. Students of both families without the prune claimed an independent model on one seed;
        VGG-11 students alone left VGG-11 label extraction at the rule's edge (75, 51, 50%). Its negatives stay of the
        source's family: on a ResNet-20 source (``bench ownership``, seed 0) the key claimed every independent LeNet-5
        (57-62% query accuracy), the family of two of its positives."""
        others = [a for a in WIDE_STUDENTS if a != arch]
        return dataclasses.replace(self.thief_aware(),
                                   positive_variants=THIEF_POSITIVES + students(*others) + WIDE_POSITIVES)

    def design(self, name: str, arch: str) -> PoolLayout:
        """This layout under the pool design ``name`` (``POOL_DESIGNS``) for a source of ``arch``."""
        if name == "paper":
            return self
        if name == "thief":
            return self.thief_aware()
        if name == "thief-wide":
            return self.thief_wide(arch)
        raise ArgumentError(f"unknown pool design {name!r}; choose one of {', '.join(POOL_DESIGNS)}")


THIEF_POSITIVES = ("rtal", "prune", "noise", "distill", "extract")
"""The thief-aware pools' positive variants, by the pool study (``nnmark bench ownership-pools``, its design
"+ students, train only"): the thief's attacks that keep the weights (RTAL, prune 70% + fine-tune, noise alpha = 1 +
fine-tune) and the source's students (distilled at T = 3, extracted with its labels; same architecture). On
Fashion-MNIST (LeNet-5 victims of 3 seeds, 13 thief's copies, 21 independent models) they matched 10, 11 and 8 copies
with no false claim (the fine-tune variants alone: 4, 5 and 5; the paper's pools: 4, 4 and 5); in the committed rerun,
on retrained LeNet-5 models, 9, 11 and 7 (4, 4, 5; 4, 4, 5).

Not adversarial training, by the same study's first run (its design "+ adversarial, train only": these plus one copy
of the source PGD-trained at ``VARIANT_PGD_EPS``, the ``"adversarial"`` variant; the rerun agrees: 29, 59, 34% against
34, 55, 48%, 5, 10, 5 copies against 9, 11, 7): against the thief's copy extracted with labels, then PGD-trained at eps
0.05 (which no method of ``bench ownership`` caught), query accuracy fell from 43, 59 and 58% to 39, 58 and 35% (the
rule needs 50%), against its eps 0.1 copy from 50, 63, 57% to 47, 66, 38%, and the key matched 9, 10 and 5 copies
instead of 10, 11 and 8 (no false claim either way). The positive
made the independent models agree less on seed 0 (the most agreeing one 26% instead of 39%), not the copy more.
An extracted student of the source PGD-trained at 0.1 instead (tried once per seed, not kept) did no better: 37,
57, 30% on the eps 0.05 copy, 8, 10, 5 copies matched. Either costs one more model, whose PGD training is the
thief's work over again (the thief's took 33-54 s; the variant's recorded 296-360 s on cores shared with other
jobs). As a validation positive instead (the same model, which the screen then demands; tried on the study's cached
models, not a design here) it does catch the eps 0.05 copy, at 70, 71 and 80%, and matches 11, 12 and 9 copies, but
the screen keeps 92 of 92 queries on seed 0, p0 rises to 0.14, and the key claims an independent model (50%). With
the 4 distilled negatives of "+ distilled negatives" as well, no false claim (most agreeing independent 44, 21,
32%) and the eps 0.05 copy at 64, 63, 58%, but the key keeps 72, 100 and 76 queries and matches 11, 9 and 7 copies:
it loses copies these pools match (seed 1: extracted labels, same architecture, and probabilities, VGG-11; seed 2:
extracted labels, same architecture)."""
THIEF_VARIANT_COPIES = 1
"""Copies of each thief-aware positive: one, a train model only. Demanded by the screen too (two copies, one
validating), the students let 28-99 of the 100 queries wanted pass it, and the key claimed 0-3 independent models."""
THIEF_NEGATIVES: tuple[str, ...] = ()
"""The thief-aware pools' negative variants: none, by the pool study (distillations of independent models as
negatives cost 4 more models and about 80% more training, lowered the query accuracy of the thief's distilled and
extracted copies, and left the most agreeing independent model where it was)."""
WIDE_STUDENTS = ("lenet5", "vgg11", "resnet20")
"""The architectures whose students the wide thief-aware pools (``PoolLayout.thief_wide``) add: the three families of
``bench ownership``'s victims, thief and independent models. Zoo architectures, so a source with a card (a factory
model, or a checkpoint behind a normalisation) cannot have these pools: ``ShadowSpec`` refuses them."""
WIDE_POSITIVES = ("prune90",)
"""What else the wide thief-aware pools add: one copy of the source pruned 90% and fine-tuned."""
POOL_DESIGNS = ("paper", "thief", "thief-wide")
"""The pool designs a command offers: the paper's, ``PoolLayout.thief_aware`` and ``PoolLayout.thief_wide``."""


def pool_specs(
    arch: str, data: str, source_digest: str, layout: PoolLayout = PoolLayout(), *, seed: int = 0,
    card: ModelCard | None = None,
) -> dict[str, list[ShadowSpec]]:
    """MetaFinger's meta-data (sec. 4.1) as specs, keyed by ``nnmark.marks.ownership.metafinger.POOLS``.

    Positives: ``af`` augmentations (eq. 1 at ``alpha``, then fine-tune) of the source (``source_digest``);
    a third of them, rounded, validate. Negatives: ``negatives`` train families (a from-scratch model of
    seed ``seed + j``, j = 1.., and its ``af`` augmentations) and ``val_negatives`` validation models
    trained from scratch with the next seeds, un-augmented so that they are independent of each other
    (MetaFinger's leave-one-out null needs that). Pass the source's training seed as ``seed``: no negative
    then repeats it. The source is not listed: ``metafinger.create`` adds it to both positive pools.
    Defaults (``PoolLayout``): 4 families, 2 validation negatives, AF 3, alpha 3 (the paper gives no alpha;
    at 3 LeNet-5 loses about a third of its accuracy before the fine-tune restores it). ``card`` goes into
    every spec (``ShadowSpec.card``); ``pool_specs_for`` picks ``arch``, ``card`` and the digest of a loaded model.
    The layout's variants (``_variant_specs``) come after these in each pool.
    """
    af, alpha = layout.af, layout.alpha
    common = {"epochs": layout.epochs, "finetune_epochs": layout.finetune_epochs, "card": card,
              "micro_batch": layout.micro_batch}
    positives = [ShadowSpec(arch, data, seed, alpha, i, base_digest=source_digest, **common) for i in range(af)]
    n_pos_val = round(af / 3)
    families = [seed + j for j in range(1, layout.negatives + 1)]
    neg_train = [ShadowSpec(arch, data, s, **common) for s in families]
    neg_train += [ShadowSpec(arch, data, s, alpha, 1000 * j + i, **common)
                  for j, s in enumerate(families, start=1) for i in range(af)]
    neg_val = [ShadowSpec(arch, data, seed + layout.negatives + j, **common)
               for j in range(1, layout.val_negatives + 1)]
    pools = {"positives_train": positives[: af - n_pos_val], "negatives_train": neg_train,
             "positives_val": positives[af - n_pos_val:], "negatives_val": neg_val}
    for name, specs in _variant_specs(arch, data, source_digest, layout, seed, common).items():
        pools[name] += specs
    return pools


def _variant_specs(arch: str, data: str, source_digest: str, layout: PoolLayout, seed: int,
                   common: dict) -> dict[str, list[ShadowSpec]]:
    """The layout's variants by pool: of the source, ``variant_copies`` each (a third, rounded, validate); of each
    negative train family j (seed ``seed + j``); and for validation, of a from-scratch teacher per variant name with
    the seeds after the validation negatives' (no N_val model is another's teacher). Variant seeds start at
    ``seed + VARIANT_SEEDS``: i for the source's copy i, 1000 j for family j, 1000 (negatives + 1) + i for teacher i."""
    copies, first = layout.variant_copies, seed + VARIANT_SEEDS
    n_val = round(copies / 3)
    pos = {v: [ShadowSpec(arch, data, seed, augment_seed=first + i, base_digest=source_digest, variant=v, **common)
               for i in range(copies)] for v in layout.positive_variants}
    teacher = seed + layout.negatives + layout.val_negatives + 1
    val_seed = first + 1000 * (layout.negatives + 1)
    return {
        "positives_train": [s for v in pos.values() for s in v[: copies - n_val]],
        "negatives_train": [ShadowSpec(arch, data, seed + j, augment_seed=first + 1000 * j, variant=v, **common)
                            for j in range(1, layout.negatives + 1) for v in layout.negative_variants],
        "positives_val": [s for v in pos.values() for s in v[copies - n_val:]],
        "negatives_val": [ShadowSpec(arch, data, teacher + i, augment_seed=val_seed + i, variant=v, **common)
                          for i, v in enumerate(layout.negative_variants)],
    }


def pool_micro_batch(size: MicroBatch, model: nn.Module, images: object) -> int | None:
    """A ``PoolLayout.micro_batch`` for pools of ``model``'s architecture trained on ``images`` (the owner's training
    images, at least 1): "auto" (``models.training.resolve_micro_batch`` against ``LARGEST_BATCH``) gives None where
    every pool batch fits ``models.training.ACTIVATION_BUDGET`` whole, so those pools keep their cache names, else the
    most images that fit; an integer or None stays. Measured in training mode, as the pools train (the model's own
    mode is restored)."""
    was_training = model.training
    try:
        return resolve_micro_batch(size, model.train(), torch.as_tensor(images[:2], dtype=torch.float32),
                                   LARGEST_BATCH)
    finally:
        model.train(was_training)


def source_arch(loaded: LoadedModel) -> str:
    """The architecture of ``loaded``'s shadow models: a zoo checkpoint's, or its ``package.module:factory``."""
    loaded.require("training", "building MetaFinger's shadow pools")
    if loaded.kind == "factory":
        return loaded.spec
    if loaded.config is not None:
        return loaded.config.arch
    raise ModelError(f"MetaFinger's shadow pools need a zoo checkpoint or a package.module:factory model, "
                     f"not a {loaded.kind} model")


def pool_specs_for(
    loaded: LoadedModel, data: str, layout: PoolLayout = PoolLayout(), *, seed: int | None = None,
) -> dict[str, list[ShadowSpec]]:
    """``pool_specs`` for a source from ``nnmark.models.load_any``: a zoo checkpoint or a ``package.module:factory``.

    Positives augment the source itself: ``base_digest`` is ``loaded.digest`` (``models.digest`` of the state dict
    as stored, outside the ``Normalized`` wrapper; pass ``loaded.model`` or ``loaded.module`` as ``build_pool``'s
    ``base``). Negatives are trained from scratch from the same architecture (the zoo's, or the factory called
    afresh under each seed) on ``data`` converted to the source's input shape (``data.load_for``). Every spec
    carries the source's card without class names, so a worker converts the data and applies the normalisation
    as here; a checkpoint trained on ``data`` itself, without normalisation, keeps the plain zoo specs (and their
    cache entries), the only ones that can hold students of another architecture (``PoolLayout.thief_wide``;
    ``ShadowSpec`` refuses them for any other source). ``seed``: the source's training seed (None: the one its
    checkpoint records, else 0).
    """
    arch = source_arch(loaded)
    card = dataclasses.replace(loaded.card, class_names=None)
    if loaded.config is not None and card.normalize is None and loaded.config.data == data and (
            card.input_shape == loaded.config.input_shape):
        card = None
    if seed is None:
        seed = (loaded.config.seed if loaded.config is not None else None) or 0
    return pool_specs(arch, data, loaded.digest, layout, seed=seed, card=card)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nnmark/shadow``, else ``~/.cache/nnmark/shadow``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nnmark" / "shadow"


def load_data(spec: ShadowSpec) -> data.Dataset:
    """``spec.data`` as the spec's model takes it: ``data.load``, or with a card ``data.load_for`` (converted to the
    card's channels and size, the class counts checked); the same tensors on every node."""
    return data.load(spec.data) if spec.card is None else data.load_for(spec.data, spec.card)


def _data_key(spec: ShadowSpec) -> tuple[str, ModelCard | None]:
    """What ``load_data`` depends on: specs with the same key train on the same tensors."""
    return spec.data, spec.card


def _fresh(spec: ShadowSpec, ds: data.Dataset) -> nn.Module:
    """A freshly initialised model of ``spec`` in pixel space (the factory, or ``models.build`` for ``ds``)."""
    module = import_factory(spec.arch)() if spec.factory else models.build(spec.arch, ds.shape, ds.num_classes)
    return module if spec.card is None else pixel_model(module, spec.card)


def _train_scratch(spec: ShadowSpec, ds: data.Dataset, device: str) -> nn.Module:
    """A negative model: built under ``torch.manual_seed(seed)`` (on the CPU) and trained with ``seed`` on ``device``
    (global RNG restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = _fresh(spec, ds)
    return models.train(model.to(device), ds.train, epochs=spec.epochs, seed=spec.seed)


def _augment(spec: ShadowSpec, base: nn.Module, ds: data.Dataset) -> nn.Module:
    """DNN augmentation: eq. 1 noise on ``base`` (a copy), then FTAL on the owner's training split."""
    noisy = relative_weight_noise(base, spec.augment_alpha, seed=spec.augment_seed)
    return finetune_mode(noisy, ds.train.x, ds.train.y, mode="FTAL", epochs=spec.finetune_epochs,
                         seed=spec.augment_seed)


def train_shadow(spec: ShadowSpec, base: nn.Module | None = None, *, dataset: data.Dataset | None = None,
                 device: str = "cpu") -> nn.Module:
    """Train (or derive) the model ``spec`` describes; returns it in eval mode, in pixel space (see ``ShadowSpec``).

    Args:
        spec: the model.
        base: for an augmented spec, the model to augment; required when ``spec.base_digest`` is set (and
            its digest must match), optional otherwise (the from-scratch base is trained when omitted). With a
            card, the model as stored or in pixel space (the normalisation is applied once either way).
        dataset: ``load_data(spec)`` already done (None: done here).
        device: where a from-scratch model (the spec's, or the base it augments when none is given) trains; a given
            base trains where it is.

    Every training step runs in the spec's ``micro_batch`` (``models.training.micro_batches``).
    """
    if dataset is None:
        dataset = load_data(spec)
    elif dataset.name != spec.data:
        raise ArgumentError(f"the spec trains on {spec.data!r}, but the data given is {dataset.name!r}")
    elif spec.card is not None and dataset.shape != spec.card.input_shape:
        raise ArgumentError(f"the spec's model takes {spec.card.input_shape} inputs, but the data given are "
                            f"{dataset.shape}; load them with load_data(spec)")
    if not spec.augmented and base is not None:
        raise ArgumentError("a from-scratch spec takes no base model")
    with micro_batches(spec.micro_batch):
        return _derive(spec, base, dataset, device)


def _derive(spec: ShadowSpec, base: nn.Module | None, dataset: data.Dataset, device: str) -> nn.Module:
    """``train_shadow``'s model, its arguments checked: trained from scratch, or derived from ``base``."""
    if not spec.augmented:
        return _train_scratch(spec, dataset, device)
    if spec.base_digest is not None:
        if base is None:
            raise ArgumentError("this spec augments a given model (base_digest): pass it as base")
        if models.digest(unwrap(base)) != spec.base_digest:
            raise ModelError("the base model's digest differs from the spec's base_digest")
    elif base is None:
        base = _train_scratch(spec.base(), dataset, device)
    if spec.card is not None:
        base = pixel_model(unwrap(base), spec.card)
    if spec.variant is not None:
        return VARIANTS[spec.variant.partition(":")[0]](spec, base, dataset.train).eval()
    return _augment(spec, base, dataset)


def _source_kind(spec: ShadowSpec) -> str:
    """The ``nnmark.models.SOURCES`` kind a model of ``spec`` is stored as."""
    return "factory" if spec.factory else "checkpoint"


def _write_model(spec: ShadowSpec, model: nn.Module, ds: data.Dataset, accuracy: float | None, path: Path) -> None:
    """``model`` (of ``spec``, trained on ``ds``) as ``load_any`` reads it back: a zoo model as an nnmark checkpoint
    (``models.save``), a factory model as the safetensors state dict its factory loads, with the card."""
    config = None if spec.factory else models.ModelConfig(spec.model_arch, ds.shape, ds.num_classes, data=spec.data,
                                                         accuracy=accuracy, seed=spec.seed)
    SOURCES[_source_kind(spec)].write(unwrap(model), spec.card, config, path)


def _read_model(spec: ShadowSpec, path: Path) -> nn.Module:
    """The model of ``spec`` that ``_write_model`` wrote to ``path``, in pixel space; read by ``load_any``, so with
    every check of its kind (tensors loaded strictly, nothing unpickled)."""
    loaded = load_any(spec.arch, weights=path) if spec.factory else load_any(str(path))
    if spec.card is None:
        return loaded.module
    if (loaded.input_shape, loaded.num_classes) != (spec.card.input_shape, spec.card.num_classes):
        raise ModelError(f"{path.name} holds a model for {loaded.input_shape} inputs and {loaded.num_classes} "
                         f"classes, not the spec's {spec.card.input_shape} and {spec.card.num_classes}")
    return pixel_model(loaded.module, spec.card)


def _model_bytes(spec: ShadowSpec, model: nn.Module, ds: data.Dataset, accuracy: float | None) -> bytes:
    """``_write_model``'s file as bytes (written in a private temp folder): what tasks take and return."""
    with tempfile.TemporaryDirectory(prefix="nnmark-shadow-") as tmp:
        path = Path(tmp) / "model.safetensors"
        _write_model(spec, model, ds, accuracy, path)
        return path.read_bytes()


def _model_from_bytes(spec: ShadowSpec, raw: bytes) -> nn.Module:
    """The model of ``_model_bytes``' bytes (``_read_model`` on a private temp file)."""
    with tempfile.TemporaryDirectory(prefix="nnmark-shadow-") as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(raw)
        return _read_model(spec, path)


def build_task(spec_json: str, base: bytes | None, dataset: str | data.Dataset, device: str = "cpu") -> Result:
    """One shadow model from its inputs alone (no path): the task every executor runs.

    A factory spec imports the user's module here, in the worker: from ``sys.path`` and the current directory
    (spawned worker processes start with the parent's ``sys.path`` and current directory; Ray tasks get the
    module through their runtime environment, see ``build_pool``).

    Args:
        spec_json: ``ShadowSpec.to_json()``.
        base: for an augmented spec, the bytes (``_model_bytes``) of the model it augments; None otherwise.
        dataset: ``spec.data`` as a ``BUNDLED_DATA`` name (loaded here with ``load_data``) or as the tensors
            ``load_data(spec)`` gives.
        device: where the model trains (the base is moved there); its bytes are written from the CPU.

    Returns the new model's bytes (``_model_bytes``) and a JSON record: the spec, its test accuracy, the seconds.
    """
    start = time.perf_counter()
    spec = ShadowSpec.from_json(spec_json)
    if isinstance(dataset, str) and dataset != spec.data:
        raise ArgumentError(f"the spec trains on {spec.data!r}, but the data given is {dataset!r}")
    ds = load_data(spec) if isinstance(dataset, str) else dataset
    with _one_thread():
        model = train_shadow(spec, None if base is None else _model_from_bytes(spec, base).to(device), dataset=ds,
                             device=device)
    acc = models.accuracy(model, ds.test)
    model = model.cpu()
    record = json.dumps({"spec": json.loads(spec_json), "test_accuracy": acc, "seconds": time.perf_counter() - start},
                        sort_keys=True)
    return _model_bytes(spec, model, ds, acc), record


def _store(cache: Path, result: Result) -> tuple[ShadowSpec, dict]:
    """Write a task's result to the cache (the record first: the checkpoint marks the entry complete)."""
    checkpoint, record = result
    fields = json.loads(record)
    spec = ShadowSpec(**fields["spec"])
    path = cache / spec.cache_name()
    atomic_write_bytes(path.with_suffix(".json"), record.encode())
    atomic_write_bytes(path, checkpoint)
    return spec, fields


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch at one CPU thread inside (restored after). A CPU model's weights depend on the thread count it trained
    with (the sums of a step run in another order), so every executor trains a spec with one, as its workers run:
    a cache name stands for one set of weights whichever executor made it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _init_worker(driver: Connection) -> None:
    """A worker process: one torch thread; a thread lock for tqdm, whose default (a named semaphore under spawn) would
    be reported as leaked once the worker is cut; and a watch that ends it once its ``driver`` lets go
    (``_exit_when_cut``)."""
    torch.set_num_threads(1)
    tqdm_std.set_lock(threading.RLock())
    threading.Thread(target=_exit_when_cut, args=(driver,), name="nnmark-driver-watch", daemon=True).start()


def _exit_when_cut(driver: Connection) -> None:
    """End this process once ``driver``, the read end of a pipe only the driving process writes to, reaches its end:
    the driver closed it (interrupted by Ctrl-C, or a task failed) or ended (even killed outright, by SIGKILL or a
    ``timeout``, with no cleanup run). Its workers would otherwise train their model to the end for nobody."""
    driver.poll(None)
    os._exit(1)


@dataclass
class ShadowPool:
    """Built shadow models, in the order of ``specs``.

    Attributes:
        specs: the requested specs; models: the models (eval mode); paths: their cache files;
        trained: the specs built on this call (implied from-scratch bases included), empty when all were cached;
        seconds: wall time of the call.
    """

    specs: list[ShadowSpec]
    models: list[nn.Module]
    paths: list[Path]
    trained: list[ShadowSpec]
    seconds: float

    def __len__(self) -> int:
        return len(self.models)

    def __getitem__(self, i: int) -> nn.Module:
        return self.models[i]

    def select(self, specs: list[ShadowSpec]) -> list[nn.Module]:
        """The models of ``specs`` (each must be in this pool)."""
        index = {s: i for i, s in enumerate(self.specs)}
        return [self.models[index[s]] for s in specs]

    def groups(self, specs: dict[str, list[ShadowSpec]]) -> dict[str, list[nn.Module]]:
        """The models of each group of ``specs`` (e.g. ``pool_specs``' pools, for ``metafinger.Pools(**...)``)."""
        return {name: self.select(group) for name, group in specs.items()}


def _as_is(obj: Any) -> Any:
    return obj


@dataclass
class _Runner:
    """How an executor runs tasks: ``run`` yields the results of a batch of tasks as each finishes; ``put``
    stores a task input once (in Ray's object store; other executors pass inputs by value)."""

    run: Callable[[list[Task]], Iterator[Result]]
    put: Callable[[Any], Any] = _as_is


def _installed(path: str) -> bool:
    path = os.path.realpath(path)
    return any(path == root or path.startswith(root + os.sep) for root in _INSTALLED)


def shipped_modules(specs: list[ShadowSpec]) -> list[str]:
    """The top-level modules of the specs' factories that Ray tasks need in the job's ``runtime_env["py_modules"]``:
    the package folder, or the file of a one-file module.

    ``build_pool`` passes them to the ``ray.init`` it makes; a Ray instance already running must have been started
    with them (``ray.init(runtime_env={"py_modules": shipped_modules(specs)})``: Ray uploads local modules only
    for a whole job), else a task that cannot import the factory fails with its one-line ModelError naming the
    module. Each factory is imported here (a one-line ModelError when it cannot be). A module of an installed
    distribution (under site-packages) is left out: like nnmark, it must be installed on every node. A namespace
    package spread over several folders cannot be shipped (ModelError).
    """
    shipped = {}
    for arch in dict.fromkeys(s.arch for s in specs if s.factory):
        import_factory(arch)
        top = sys.modules[arch.partition(":")[0].split(".")[0]]
        paths = list(getattr(top, "__path__", None) or [top.__file__])
        if len(paths) > 1:
            raise ModelError(f"factory module {top.__name__} spans {len(paths)} folders; Ray ships a module from one")
        if not _installed(paths[0]):
            shipped[top.__name__] = paths[0]
    return list(shipped.values())


def _ray_get(ray, ref) -> Result:
    """``ray.get(ref)``; a failed task raises the task's own exception (as the process executor does), not Ray's
    wrapper with the remote traceback, so e.g. a factory the task cannot import is its one-line ModelError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if e.cause is None:
            raise
        raise e.cause from None


def _ray_results(ray, refs: list, timeout: float | None) -> Iterator[Result]:
    """The results of Ray task ``refs`` as each finishes; NnmarkError (the rest cancelled) past ``timeout`` s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while refs:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        done, refs = ray.wait(refs, num_returns=1, timeout=left)
        if not done:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise NnmarkError(f"{len(refs)} shadow-model task(s) did not finish within {timeout:g} s on Ray")
        yield _ray_get(ray, done[0])


def _ray_runner(ray, timeout: float | None, device: str) -> _Runner:
    """One-CPU Ray tasks; on a CUDA ``device``, each also asks Ray for one GPU and trains on "cuda", the one Ray
    gave it (Ray shows a task its GPUs alone, so an index of the driver's means nothing there)."""
    cuda = device.startswith("cuda")
    remote = ray.remote(num_cpus=1, num_gpus=1 if cuda else 0)(build_task)
    device = "cuda" if cuda else device
    return _Runner(run=lambda batch: _ray_results(ray, [remote.remote(*t, device=device) for t in batch], timeout),
                   put=lambda obj: obj if isinstance(obj, str) else ray.put(obj))


@contextlib.contextmanager
def _runner(executor: str, workers: int, ray_address: str | None, ray_timeout: float | None,
            todo: list[ShadowSpec], device: str) -> Iterator[_Runner]:
    """The executor's ``_Runner`` for the tasks of ``todo`` on ``device`` (started here, stopped on exit)."""
    tasks = len(todo)
    if executor == "serial" or tasks == 0:
        yield _Runner(lambda batch: (build_task(*t, device=device) for t in batch))
    elif executor == "process":
        ctx = multiprocessing.get_context("spawn")
        watched, held = ctx.Pipe(duplex=False)
        with held, ProcessPoolExecutor(max_workers=min(workers, tasks), mp_context=ctx, initializer=_init_worker,
                                       initargs=(watched,)) as pool:
            try:
                yield _Runner(lambda batch: (f.result() for f in as_completed(
                    [pool.submit(build_task, *t, device=device) for t in batch])))
            except BaseException:  # interrupted, or a task failed: the running tasks end now, the queued ones never
                held.close()
                pool.shutdown(cancel_futures=True)
                raise
    else:
        try:
            import ray
        except ModuleNotFoundError:
            raise NnmarkError("executor 'ray' needs Ray: pip install 'nnmark[ray]'") from None
        started = not ray.is_initialized()
        if started:
            modules = shipped_modules(todo)
            ray.init(address=ray_address, **({"runtime_env": {"py_modules": modules}} if modules else {}))
        try:
            yield _ray_runner(ray, ray_timeout, device)
        finally:
            if started:
                ray.shutdown()


def _missing(specs: list[ShadowSpec], cache: Path) -> tuple[list[ShadowSpec], list[ShadowSpec]]:
    """The specs to build, as (from-scratch, augmented): those not cached, and the uncached bases they need."""
    missing = list(dict.fromkeys(s for s in specs if not (cache / s.cache_name()).exists()))
    scratch = [s for s in missing if not s.augmented]
    scratch += [b for b in dict.fromkeys(s.base() for s in missing if s.augmented and s.base_digest is None)
                if b not in scratch and not (cache / b.cache_name()).exists()]
    return scratch, [s for s in missing if s.augmented]


def build_pool(
    specs: list[ShadowSpec],
    *,
    cache_dir: str | os.PathLike,
    base: nn.Module | None = None,
    workers: int = DEFAULT_WORKERS,
    executor: str = "process",
    ray_address: str | None = None,
    ray_timeout: float | None = DEFAULT_RAY_TIMEOUT,
    progress: bool = False,
    on_built: Callable[[ShadowSpec, dict], None] | None = None,
    device: str = "cpu",
) -> ShadowPool:
    """Load every spec from ``cache_dir``, building the missing ones first (in parallel); see the module docstring.

    Args:
        specs: the models wanted (duplicates allowed).
        cache_dir: folder of the cache (created if missing), read and written by this process only.
        base: the given model that specs with ``base_digest`` augment (the owner's source model; as stored or
            in pixel space, e.g. ``LoadedModel.module`` or ``.model``).
        workers: worker processes for ``executor="process"``.
        executor: "process" (spawned workers, one torch thread each; they start with this process's ``sys.path``
            and current directory, so they import a factory module as it is imported here), "serial" (this
            process) or "ray" (one-CPU Ray tasks on the running Ray instance, else on
            ``ray.init(address=ray_address)``, shut down afterwards; the nodes need nnmark installed, not a shared
            file system; the ``ray.init`` made here ships a factory's top-level module as ``py_modules``, see
            ``shipped_modules``).
        ray_address: the Ray cluster to connect to when none is initialised (None: start a local one).
        ray_timeout: seconds to wait for each batch of Ray tasks (None: no limit); past it the tasks left are
            cancelled and NnmarkError is raised.
        progress: show a tqdm bar over the models built.
        on_built: called in this process once per model built, as each is cached, with its spec and record
            (``test_accuracy``, ``seconds``); not for models found in the cache.
        device: where the models train (cpu, cuda, cuda:N, mps or auto: ``envs.resolve_device``, ArgumentError for
            one that is not here); Ray asks one GPU per task on a CUDA device. The cache files and the pool's
            models are on the CPU whatever trained them.
    """
    from nnmark.envs import resolve_device

    if executor not in EXECUTORS:
        raise ArgumentError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise ArgumentError(f"workers must be >= 1, got {workers}")
    if ray_timeout is not None and not ray_timeout > 0:
        raise ArgumentError(f"ray_timeout must be > 0 seconds or None, got {ray_timeout!r}")
    device = resolve_device(device)
    start = time.perf_counter()
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    digest = models.digest(unwrap(base)) if base is not None else None
    for s in specs:
        if s.base_digest is not None and s.base_digest != digest:
            raise ModelError(f"spec {s.to_json()} augments a model with digest {s.base_digest[:12]}..., "
                             f"which is not the given base")
    scratch, augmented = _missing(specs, cache)
    todo = scratch + augmented
    bar = tqdm(total=len(todo), desc="shadow models", unit="model", disable=not progress)
    with bar, _runner(executor, workers, ray_address, ray_timeout, todo, device) as runner:

        def build(tasks: list[Task]) -> None:
            for result in runner.run(tasks):
                spec, record = _store(cache, result)
                bar.update()
                if on_built is not None:
                    on_built(spec, record)

        loaded = {key: load_data(s) for key, s in {_data_key(s): s for s in todo}.items()}
        inputs = {key: runner.put(key[0] if key[0] in BUNDLED_DATA else ds) for key, ds in loaded.items()}
        build([(s.to_json(), None, inputs[_data_key(s)]) for s in scratch])
        given = {(s.arch, *_data_key(s)): s for s in augmented if s.base_digest is not None}
        sources = {key: runner.put(_model_bytes(s.base(), base, loaded[_data_key(s)], None))
                   for key, s in given.items()}
        bases = {b: runner.put((cache / b.cache_name()).read_bytes())
                 for b in dict.fromkeys(s.base() for s in augmented if s.base_digest is None)}
        build([(s.to_json(), sources[(s.arch, *_data_key(s))] if s.base_digest is not None else bases[s.base()],
                inputs[_data_key(s)]) for s in augmented])
    paths = [cache / s.cache_name() for s in specs]
    return ShadowPool(list(specs), [_read_model(s, p) for s, p in zip(specs, paths)], paths, todo,
                      time.perf_counter() - start)
