"""The models ``nnmark bench ownership`` trains beyond the shadow cache: the thief's copies of the victim and the
distilled independent models, each cached by the recipe that made it.

A recipe is JSON-able: the attack (an ``nnmark.attacks`` function), its options, the digest of the model it starts
from and the data it trains on. Its model is cached as ``<cache>/<arch>-<first 16 hex of SHA-256(recipe)>
.safetensors`` (an nnmark checkpoint, ``models.save``), with its recipe, training seconds and torch thread count (a
CPU model's weights depend on it) in a ``.json`` beside it, so a rerun trains nothing it trained before. A theft may
start from another theft's copy (``Theft.base``: extraction, then adversarial training of the copy). A watermarked
victim and its key (``embedded``) are cached the same way, the key signed with ``SECRET``; any other model a bench
trains (``trained``: SAC's scratch calibration models) too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from nnmark import data, keys, models
from nnmark._io import atomic_write_bytes
from nnmark.attacks import finetune_mode, prune_finetune
from nnmark.attacks.adversarial import adversarial_train
from nnmark.attacks.distill import SAME_ARCH, SOK_TEMPERATURE, distill
from nnmark.attacks.extract import extract
from nnmark.attacks.fineprune import fine_prune
from nnmark.attacks.noise import noise_finetune
from nnmark.bench.common import recipe_digest
from nnmark.errors import ArgumentError
from nnmark.keys import KeyFile

ATTACKS: dict[str, Callable] = {
    "distill": distill, "extract": extract, "adversarial": adversarial_train, "finetune-mode": finetune_mode,
    "prune-finetune": prune_finetune, "noise-finetune": noise_finetune, "fine-prune": fine_prune,
}
"""The attack functions a recipe may name (those of the ``nnmark.attacks`` registry the thief uses)."""
THEFT_SEEDS = 2_000_000
"""Offset of the seeds of the thief's copies and of the distilled independent models: a student of seed s starts from
the initial weights of the from-scratch model of seed s, so these seeds stay apart from the victims' (100 s), the
pools' (100 s + i, and ``shadow.VARIANT_SEEDS`` + ...) and the independents' (1000 (s + 1) + ...); no copy starts
from the weights of a model it is compared with."""
SECRET = b"nnmark-bench-ownership"
"""Signs the cached keys of watermarked victims (a bench cache, not an owner's secret)."""
ADVERSARIAL_EPS = (0.05, 0.1)
"""PGD radii of the adversarial training of the extracted copy (Madry's 0.3 is for MNIST digits; on Fashion-MNIST
0.1 already costs the copy more than 5 points of accuracy)."""


def adversarial(eps: float) -> dict:
    """PGD training options at radius ``eps``: 5 steps of eps / 4 (to fit a CPU) and half the loss on clean images,
    so that the thief keeps a useful copy."""
    return {"eps": eps, "step_size": eps / 4, "steps": 5, "clean_weight": 0.5}


@dataclass(frozen=True)
class Theft:
    """One attack on the victim: an ``ATTACKS`` name, its options, and the theft whose copy it starts from (None:
    the victim). ``training`` says which epoch count of the run's parameters it takes ("train" or "finetune")."""

    attack: str
    options: dict = field(default_factory=dict)
    base: str | None = None
    training: str = "train"


def catalogue() -> dict[str, Theft]:
    """The thefts of the issue, by the name the tables show."""
    soft = {"temperature": SOK_TEMPERATURE, "alpha": 1.0}
    return {
        "distill, same arch, T=3": Theft("distill", soft),
        "distill, vgg11, T=3": Theft("distill", {**soft, "student_arch": "vgg11"}),
        "extract labels, same arch": Theft("extract", {"answers": "labels"}),
        "extract probabilities, same arch": Theft("extract", {"answers": "probabilities"}),
        "extract labels, vgg11": Theft("extract", {"answers": "labels", "student_arch": "vgg11"}),
        "extract probabilities, vgg11": Theft("extract", {"answers": "probabilities", "student_arch": "vgg11"}),
        **{f"extract labels + adversarial eps={eps:g}": Theft("adversarial", adversarial(eps),
                                                               base="extract labels, same arch", training="finetune")
           for eps in ADVERSARIAL_EPS},
        "RTAL": Theft("finetune-mode", {"mode": "RTAL"}, training="finetune"),
        "prune 70% + fine-tune": Theft("prune-finetune", {"fraction": 0.7}, training="finetune"),
        "prune 90% + fine-tune": Theft("prune-finetune", {"fraction": 0.9}, training="finetune"),
        "noise alpha=1 + fine-tune": Theft("noise-finetune", {"alpha": 1.0}, training="finetune"),
        "fine-pruning": Theft("fine-prune", {}, training="finetune"),
    }


def _arch(recipe: dict, base_arch: str) -> str:
    """The architecture of a recipe's model: a distillation's or extraction's student, else its base's."""
    student = recipe["options"].get("student_arch", SAME_ARCH)
    return base_arch if student == SAME_ARCH else student


def _path(cache: Path, arch: str, recipe: dict) -> Path:
    """Where the model of ``recipe`` is cached: ``<arch>-<first 16 hex of SHA-256 of its JSON>.safetensors``."""
    return cache / f"{arch}-{recipe_digest(recipe)}.safetensors"


def _save(model: nn.Module, arch: str, ds: data.Dataset, recipe: dict, seconds: float, path: Path) -> None:
    """Cache ``model`` at ``path`` with its recipe, training seconds and torch threads in the ``.json`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    models.save(model, models.ModelConfig(arch, ds.shape, ds.num_classes, data=ds.name, seed=recipe["seed"]), path)
    record = {"recipe": recipe, "seconds": seconds, "threads": torch.get_num_threads()}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(record).encode())


def _cached(path: Path) -> dict | None:
    """The record of a cached model (its seconds, ``cached``: True), None when it is not cached."""
    record = path.with_suffix(".json")
    return {**json.loads(record.read_text()), "cached": True} if path.exists() and record.exists() else None


def derive(recipe: dict, base: nn.Module, base_arch: str, ds: data.Dataset, cache: Path) -> tuple[nn.Module, dict]:
    """The model ``recipe`` makes from ``base`` on ``ds.train``, from ``cache`` when there, and its record: the
    seconds its training took (recorded when it was trained) and whether it was cached. ``recipe``: attack,
    options, seed, epochs; the base's digest and the data are added."""
    def make() -> nn.Module:
        out = ATTACKS[recipe["attack"]](base, ds.train.x, ds.train.y, **recipe["options"], epochs=recipe["epochs"],
                                        seed=recipe["seed"])
        return out[0] if isinstance(out, tuple) else out

    return trained({**recipe, "base": models.digest(base), "data": ds.name}, make, _arch(recipe, base_arch), ds, cache)


def trained(recipe: dict, make: Callable[[], nn.Module], arch: str, ds: data.Dataset,
            cache: Path) -> tuple[nn.Module, dict]:
    """The model ``make()`` trains (in eval mode), from ``cache`` by ``recipe`` (JSON-able, with a ``seed``) when
    there, and its record: the seconds its training took (recorded when it was trained) and whether it was cached."""
    path = _path(cache, arch, recipe)
    if record := _cached(path):
        return models.load(path)[0], record
    start = time.perf_counter()
    model = make().eval()
    seconds = time.perf_counter() - start
    _save(model, arch, ds, recipe, seconds, path)
    return model, {"seconds": seconds, "cached": False}


def embedded(recipe: dict, embed: Callable[[], tuple[nn.Module, KeyFile]], arch: str, ds: data.Dataset,
             cache: Path) -> tuple[nn.Module, KeyFile, dict]:
    """A watermarked victim and its key, made by ``embed()`` or read from ``cache`` by ``recipe`` (JSON-able: the
    method, its settings, the seed, and what it starts from) as ``trained`` caches a model, the key beside it, and
    its record (seconds, cached)."""
    path = _path(cache, arch, recipe)
    key_path = path.with_suffix(".key")
    made = []

    def make() -> nn.Module:
        model, key = embed()
        keys.save(key, key_path, secret=SECRET)
        made.append(key)
        return model

    if not key_path.exists():
        path.unlink(missing_ok=True)  # a model cached without its key is made again
    model, record = trained(recipe, make, arch, ds, cache)
    return model, made[0] if made else keys.load(key_path, secret=SECRET), record


def select(names: list[str] | tuple[str, ...] | None) -> dict[str, Theft]:
    """The thefts of ``catalogue()`` named (None: all), in its order; ArgumentError for an unknown name or a theft
    whose base is left out."""
    everything = catalogue()
    chosen = everything if names is None else {n: t for n, t in everything.items() if n in names}
    unknown = set(names or ()) - set(everything)
    orphans = [n for n, t in chosen.items() if t.base is not None and t.base not in chosen]
    if unknown or orphans:
        raise ArgumentError(f"thefts: unknown {sorted(unknown)}, or named without the theft they start from "
                            f"{orphans}")
    return chosen


def theft_seed(seed: int) -> int:
    """The seed of every theft of victim seed ``seed`` (``THEFT_SEEDS``)."""
    return THEFT_SEEDS + seed


def distilled_seed(seed: int, i: int) -> int:
    """The seed of the ``i``-th distilled independent model of victim seed ``seed`` (``THEFT_SEEDS``)."""
    return THEFT_SEEDS + 1000 * (seed + 1) + i


def steal(victim: nn.Module, arch: str, thief: data.Dataset, p: dict, seed: int, cache: Path,
          progress: bool = False, names: list[str] | tuple[str, ...] | None = None) -> dict[str, dict]:
    """The thefts ``names`` of ``catalogue()`` (None: all) on ``victim`` with the thief's data: name -> {model,
    arch, attack, seconds, cached}."""
    out: dict[str, dict] = {}
    for name, theft in tqdm(select(names).items(), desc="thefts", disable=not progress, leave=False):
        base, base_arch = (victim, arch) if theft.base is None else (out[theft.base]["model"], out[theft.base]["arch"])
        recipe = {"attack": theft.attack, "options": theft.options, "seed": theft_seed(seed),
                  "epochs": p["theft_epochs" if theft.training == "train" else "finetune_epochs"]}
        model, record = derive(recipe, base, base_arch, thief, cache)
        out[name] = {"model": model, "arch": _arch(recipe, base_arch), "attack": theft.attack, **record}
    return out
