"""``nnmark bench ownership``: ownership keys against a thief, judged the field's way, on Fashion-MNIST.

Layout (issue "Ownership that survives a thief"): per victim seed and victim architecture (``victims``: LeNet-5
and ResNet-20), the owner trains a victim on the owner half of the training split (``fashion-mnist@owner``); the
thief holds the other half (``@thief``). Independent models, trained with other seeds on either half, of three
architectures (LeNet-5, narrow VGG-11, ResNet-20), plus distillations of *other* independent teachers (the hardest
negatives), form the false-claim side, the same for every victim of a seed. The thief's copies
(``nnmark.bench.thefts``: distillation at T = 3 into the same and another architecture, extraction with labels or
probabilities into the same and another architecture, extraction then PGD adversarial training at eps 0.05 and 0.1,
RTAL, prune 70% / 90% + fine-tune, noise alpha = 1 + fine-tune, fine-pruning) form the positive side; a copy counts
as a theft only while it keeps its victim's test accuracy minus 5 points (``attacks.measure.is_theft``), the others
are listed apart.

Methods: one ``KEYS`` entry per key (how it is made, how a suspect is judged, whether it is a watermark), one
``METHODS`` row per way of asking it (SAC's key is also asked for labels only). Fingerprints are made from the clean
victim and judged on its copies: SAC-m and SAC-w (probabilities, and one-hot labels), SAC-w on all the victim's
held-out errors (``sac_all_errors_n`` at most, no screen, deciding on one-hot labels: the key that separates label
extraction into the same architecture in ``sac``'s study), SAC-w on the victim's rarest errors (``n`` queries,
screen "rare", the suspect's agreement with the victim's one-hot labels: the 100-query key for that theft), all
calibrated on the negative models of MetaFinger's paper pools (``marks.ownership.shadow``, cached under its
``default_cache_dir()``) and ``sac_scratch`` models of the victim's recipe; MetaFinger (paper pools, thief-aware
pools and the wide thief-aware ones: ``shadow.POOL_DESIGNS``); IPGuard. Watermarks (``watermarks``) are embedded
at training, so each makes its own marked victim from the same owner half and architecture (coupled direct and
invisible r = 0.5 and Zhang's content triggers and Adi's abstract images from a fresh model of the victim's seed,
frontier stitching by fine-tuning the clean victim), the thefts (``watermark_thefts``; None: all) are applied to THAT
victim, and its key judges those copies and every independent model by its own rule. Per method x attack: the
true-positive rate under the method's rule and the count of independent models that rule falsely claims, the
threshold-free TPR (copies scoring past the most suspicious independent model), ROC AUC of the statistic (copies vs
independents; ties count half), the median statistic and p-value, queries, and the thief's accuracy; one survival table
per victim architecture. Cost per method: key creation (a watermark's: training its marked victim; a SAC key's: its
scratch calibration models, trained once for the victim's SAC keys, cached, and counted in each by their recorded
training), shadow or calibration models and their recorded training, verification queries. Test accuracy is measured on
the second half of the test split (the first half is the pool SAC draws its queries from).

``nnmark audit``'s sequential decision (``nnmark.audit.run.audit_key``, batches of ``batch_size``, alpha =
``alpha``) is run for every key on its copies and on every independent model, in ``audit_orders`` seeded query
orders: queries to a decision against the whole key's, and the sequential false claims over the independent
models beside the whole key's (Ville's bound: each run claims a model whose match rate is at most the method's
null with chance at most alpha; SAC is asked whole, its statistic needs every query).

The issue's goals are checked on the run's numbers: every theft matched at <= 100 queries (``goals``), SAC's AUCs
(``GOALS``), MetaFinger's thief-aware pools at 95% query accuracy under RTAL, prune 70% and noise + fine-tune with p <
1e-6 against every independent model (``metafinger_goal``: the binomial tail with the most agreeing independent
model's query accuracy as the null rate: a p-value against each of them, the largest of which decides), and the
audit's bound (``audit_goal``).

Not measured (``NOT_MEASURED``): nothing the issue lists is left out of the design. A run reduced against
the issue's design (``ISSUE``: 3 seeds, both victims, 5 watermarks, every theft on every victim) says so in its
header (``reductions``).

Runtime knobs (``FULL`` / ``QUICK``; ``nnmark bench ownership --set NAME=JSON``, or ``run(overrides=...)``, changes
any of them, checked before anything is trained (``check_overrides``), and the report's command names the change):
``seeds``, ``victims``, ``watermarks``, ``watermark_thefts``, ``subset`` (train, test images of Fashion-MNIST
kept; None: all 60k / 10k), ``epochs`` per architecture of from-scratch models (watermarked victims too),
``theft_epochs`` (distillation and extraction passes over the thief's 30k images), ``finetune_epochs`` (RTAL,
pruning, noise, fine-pruning, adversarial training), ``pool`` (MetaFinger's negatives, validation negatives,
augmentation factor), ``independents`` (per architecture: models on the owner half, on the thief half),
``distilled`` (teacher, student architecture), ``n`` queries per key, ``candidates`` (MetaFinger's starting
images), ``meta_epochs``, ``ipguard_iterations``, ``workers`` (shadow training processes), ``audit_orders``,
``alpha``, ``batch_size``. The full mode is the issue's design: 3 seeds x 2 victims x (1 clean + 5 marked victims)
x 13 thefts, about 470 trained copies; on a shared 2-core machine with empty caches that is roughly 10-12 hours
(measured: a from-scratch model on a 30k half about 2 minutes, LeNet-5 or ResNet-20 alike at their epochs; a
watermarked LeNet-5's theft about 35 s; one seed of a LeNet-5 victim with its pools, independents, 5 watermarks
and 13 + 65 thefts about 80 minutes). Every model is cached as it is trained, and every finished seed's row
(``seed_row``, valid for the same parameters and code), so a run stopped after hours resumes where it was. The
committed run can be reduced with ``--set`` (e.g. ``--seeds 1 --set
'victims=["lenet5"]'``); a run without a LeNet-5 victim writes ``ownership-<victims>`` (``stem``), beside the LeNet-5
tables instead of over them. The quick mode (a 3,000 / 1,000
image subset, mnist5k when Fashion-MNIST is not installed; LeNet-5 only; the coupled direct watermark against two
thefts) runs in about two minutes for the test.
"""

from __future__ import annotations

import functools
import io
import json
import shlex
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark._io import atomic_write_bytes
from nnmark.attacks.distill import SOK_TEMPERATURE, build_student
from nnmark.attacks.measure import is_theft
from nnmark.audit import run as audit
from nnmark.bench import plots, thefts
from nnmark.bench.common import (ARCH_NAMES, document, header, jsonable, parameters, recipe_digest, section,
                                 source_digest, table, write)
from nnmark.data.roles import attacker_data
from nnmark.errors import ArgumentError, DataError, NnmarkError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import backdoor_wm, coupled, frontier, ipguard, metafinger, sac, shadow
from nnmark.marks.ownership.shadow import ShadowSpec
from nnmark.marks.ownership.stats import binomial_tail
from nnmark.marks.verdict import Verdict
from nnmark.oracles import LabelsOracle, Oracle, TorchOracle

STEM = "ownership"
DATA = "fashion-mnist"
FALLBACK = "mnist5k"
WATERMARKS = ("coupled direct", "coupled invisible", "Zhang", "Adi", "frontier")
FULL = {
    "seeds": 3, "victims": ("lenet5", "resnet20"), "watermarks": WATERMARKS, "watermark_thefts": None,
    "subset": None, "epochs": {"lenet5": 4, "vgg11": 3, "resnet20": 2}, "theft_epochs": 4,
    "finetune_epochs": 2, "pool": {"negatives": 3, "val_negatives": 2, "af": 2}, "n": 100, "candidates": 200,
    "meta_epochs": 10, "ipguard_iterations": 1000, "workers": 2, "audit_orders": 3, "alpha": 1e-3, "batch_size": 8,
    "sac_scratch": sac.DEFAULT_SCRATCH_NEGATIVES, "sac_all_errors_n": 1000,
    "independents": {"lenet5": (4, 4), "vgg11": (3, 3), "resnet20": (1, 2)},
    "distilled": (("lenet5 thief #1", "lenet5"), ("vgg11 thief #1", "lenet5"), ("lenet5 owner #1", "vgg11"),
                  ("resnet20 thief #1", "lenet5")),
}
QUICK = {
    "seeds": 1, "victims": ("lenet5",), "watermarks": ("coupled direct",),
    "watermark_thefts": ("distill, same arch, T=3", "RTAL"), "subset": (3000, 1000),
    "epochs": {"lenet5": 4, "vgg11": 2, "resnet20": 1}, "theft_epochs": 4,
    "finetune_epochs": 1, "pool": {"negatives": 3, "val_negatives": 2, "af": 2}, "n": 20, "candidates": 80,
    "meta_epochs": 10, "ipguard_iterations": 500, "workers": 1, "audit_orders": 1, "alpha": 1e-3, "batch_size": 8,
    "sac_scratch": 3, "sac_all_errors_n": 60, "independents": {"lenet5": (1, 1), "vgg11": (0, 1), "resnet20": (0, 1)},
    "distilled": (("vgg11 thief #1", "lenet5"),),
}
ISSUE = {"seeds": 3, "victims": ("lenet5", "resnet20"), "watermarks": WATERMARKS, "watermark_thefts": None}
"""The issue's design, against which a run's reductions are named."""
NOT_MEASURED = ()
CLEAN = "clean victim"
"""The victim the fingerprints are made from (a watermark's victim is named by its key)."""
VICTIM = "none (the victim itself)"
"""The row of the untouched victim: every method must match it."""


@dataclass(frozen=True)
class Owner:
    """What a key is made from: the clean victim, its architecture, the shadow pools by design
    (``shadow.POOL_DESIGNS``: ``shadow.PoolLayout.design``), the owner's data, the run's parameters, the seed and
    the cache of derived models (SAC's scratch models are cached there too)."""

    victim: nn.Module
    arch: str
    pools: dict[str, metafinger.Pools]
    data: data.Dataset
    p: dict
    seed: int
    cache: Path

    @functools.cached_property
    def scratch(self) -> tuple[list[nn.Module], float]:
        """SAC's ``sac_scratch`` calibration models of the victim's recipe, made once for all its SAC keys (cached in
        ``cache`` like the thefts' copies, by what they depend on: the architecture, data, epochs and training seed,
        so the next victim seed's, whose seeds are these shifted by one, trains one new model), and their recorded
        training seconds (each SAC key's creation counts them: what one key alone costs)."""
        epochs = self.p["epochs"][self.arch]

        def one(i: int) -> tuple[nn.Module, dict]:
            recipe = {"attack": "sac scratch", "arch": self.arch, "data": self.data.name, "epochs": epochs,
                      "seed": self.seed + i}
            return thefts.trained(recipe, lambda: sac.scratch_models(self.victim, self.data.train, 1, epochs=epochs,
                                                                     seed=self.seed + i)[0],
                                  self.arch, self.data, self.cache)

        made = [one(i) for i in range(self.p["sac_scratch"])]
        return [m for m, _ in made], sum(record["seconds"] for _, record in made)


@dataclass(frozen=True)
class KeySpec:
    """One key of the bench: ``make(owner)`` gives (its marked victim, or None for a fingerprint of the clean
    victim; the key), ``verify(oracle, key)`` judges a suspect, ``lower_is_closer`` when a lower statistic is more
    suspicious (SAC's distance), ``shadows`` the pool design (``shadow.POOL_DESIGNS``) it is made from, if any (their
    training is its cost), ``scratch`` whether it calibrates on ``Owner.scratch`` (their training is in its creation
    seconds), ``recipe`` what else decides a watermarked victim's weights (added to its cache recipe)."""

    make: Callable[[Owner], tuple[nn.Module | None, KeyFile]]
    verify: Callable[[Oracle, KeyFile], Verdict]
    lower_is_closer: bool = False
    shadows: str | None = None
    scratch: bool = False
    recipe: dict = field(default_factory=dict)


# --- data and models ----------------------------------------------------------------------------------------


def derived_cache() -> Path:
    """Where this bench caches what it derives (thefts, distilled independents, watermarked victims, the data subset):
    ``bench-ownership`` beside the shadow-model cache; the benches built on its setting share it."""
    return shadow.default_cache_dir().parent / "bench-ownership"


def dataset_spec(p: dict, cache: Path) -> tuple[str, str]:
    """(the spec of the run's data, a note on it): Fashion-MNIST, a subset written once as .npz when ``p["subset"]``
    is set, or ``FALLBACK`` when Fashion-MNIST is not installed."""
    try:
        full = data.load(DATA)
    except DataError as e:
        return FALLBACK, f"{DATA} is not installed ({e}); {FALLBACK} instead"
    if p["subset"] is None:
        return DATA, f"{DATA}: {len(full.train)} training images (two halves), {len(full.test)} test images"
    n_train, n_test = p["subset"]
    path = cache / f"{DATA}-{n_train}-{n_test}.npz"
    if not path.exists():
        buf = io.BytesIO()
        np.savez(buf, x=full.train.x[:n_train].numpy(), y=full.train.y[:n_train].numpy(),
                 x_test=full.test.x[:n_test].numpy(), y_test=full.test.y[:n_test].numpy())
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    return f"npz:{path}", f"the first {n_train} training and {n_test} test images of {DATA}"


def independent_specs(spec: str, p: dict, seed: int) -> dict[str, ShadowSpec]:
    """From-scratch independent models by name ("vgg11 thief #2"), seeds apart from the victim's and the pools'."""
    out = {}
    for a, (arch, counts) in enumerate(p["independents"].items()):
        for half, count in zip(data.ROLES, counts):
            for i in range(count):
                s = 1000 * (seed + 1) + 100 * a + 10 * (half == "thief") + i
                out[f"{arch} {half} #{i + 1}"] = ShadowSpec(arch, f"{spec}@{half}", s, epochs=p["epochs"][arch])
    return out


def distilled(independents: dict[str, dict], p: dict, seed: int, cache: Path) -> dict[str, dict]:
    """Distillations (T = 3, soft labels only) of independent teachers on their own half, by name."""
    out = {}
    for i, (teacher, student) in enumerate(p["distilled"]):
        t = independents[teacher]
        options = {"temperature": SOK_TEMPERATURE, "alpha": 1.0, "student_arch": student}
        recipe = {"attack": "distill", "options": options, "seed": thefts.distilled_seed(seed, i),
                  "epochs": p["theft_epochs"]}
        model, record = thefts.derive(recipe, t["model"], t["arch"], data.load(t["data"]), cache)
        out[f"{student} distilled from {teacher}"] = {"model": model, "arch": student, "data": t["data"],
                                                      "kind": "distilled", **record}
    return out


def _recorded_seconds(pool: shadow.ShadowPool, specs: list[ShadowSpec]) -> float:
    """Training seconds the shadow cache recorded for ``specs`` (each as built, whenever that was)."""
    index = dict(zip(pool.specs, pool.paths))
    return sum(json.loads(index[s].with_suffix(".json").read_text())["seconds"] for s in dict.fromkeys(specs))


# --- keys and verdicts --------------------------------------------------------------------------------------


def _sac(variant: str, n: str = "n", **options) -> Callable[[Owner], tuple[None, KeyFile]]:
    """SAC's key of at most ``o.p[n]`` queries, calibrated on the pools' families and ``sac_scratch`` models of the
    victim's recipe; ``options`` go to ``sac.create``."""
    return lambda o: (None, sac.create(o.victim, o.pools["paper"], o.data.train.x, variant=variant, n=o.p[n],
                                       scratch_negatives=o.p["sac_scratch"], scratch_epochs=o.p["epochs"][o.arch],
                                       scratch=o.scratch[0], seed=o.seed, dataset=o.data, **options))


def _metafinger(layout: str) -> Callable[[Owner], tuple[None, KeyFile]]:
    def make(o: Owner) -> tuple[None, KeyFile]:
        settings = metafinger.Settings(n=o.p["n"], candidates=o.p["candidates"], epochs=o.p["meta_epochs"])
        return None, metafinger.create(o.victim, o.pools[layout], o.data.train.x, settings, seed=o.seed)
    return make


def _ipguard(o: Owner) -> tuple[None, KeyFile]:
    order = torch.randperm(len(o.data.train), generator=torch.Generator().manual_seed(o.seed))
    oracle = TorchOracle(o.victim, o.data.shape, o.data.num_classes)
    return None, ipguard.create(oracle, o.data.train.x[order[: o.p["n"]]], iterations=o.p["ipguard_iterations"],
                                seed=o.seed)


def _fresh(o: Owner) -> nn.Module:
    """An untrained model of the victim's architecture, initialised from the victim's seed."""
    return build_student(o.arch, o.data.shape, o.data.num_classes, 100 * o.seed)


def _coupled(kind: str) -> Callable[[Owner], tuple[nn.Module, KeyFile]]:
    return lambda o: coupled.embed(_fresh(o), o.data, kind=kind, epochs=o.p["epochs"][o.arch], seed=o.seed)


def _backdoor(kind: str) -> Callable[[Owner], tuple[nn.Module, KeyFile]]:
    return lambda o: backdoor_wm.embed(_fresh(o), o.data, kind=kind, epochs=o.p["epochs"][o.arch], seed=o.seed)


KEYS = {
    "SAC-m": KeySpec(_sac("m"), sac.verify, lower_is_closer=True, shadows="paper", scratch=True),
    "SAC-w": KeySpec(_sac("w"), sac.verify, lower_is_closer=True, shadows="paper", scratch=True),
    "SAC-w all errors": KeySpec(_sac("w", "sac_all_errors_n", screen="none", decide_on="labels"), sac.verify,
                                lower_is_closer=True, shadows="paper", scratch=True),
    "SAC-w rare errors": KeySpec(_sac("w", screen="rare", statistic="agreement", decide_on="labels"), sac.verify,
                                 lower_is_closer=True, shadows="paper", scratch=True),
    "MetaFinger": KeySpec(_metafinger("paper"), metafinger.verify, shadows="paper"),
    "MetaFinger thief-aware": KeySpec(_metafinger("thief"), metafinger.verify, shadows="thief"),
    "MetaFinger thief-wide": KeySpec(_metafinger("thief-wide"), metafinger.verify, shadows="thief-wide"),
    "IPGuard": KeySpec(_ipguard, ipguard.verify),
    "coupled direct": KeySpec(_coupled("direct"), coupled.verify),
    "coupled invisible": KeySpec(_coupled("invisible"), coupled.verify),
    "Zhang": KeySpec(_backdoor("content"), backdoor_wm.verify),
    "Adi": KeySpec(_backdoor("abstract"), backdoor_wm.verify,
                   recipe={"triggers_per_batch": backdoor_wm.ADI_PER_BATCH}),
    "frontier": KeySpec(lambda o: frontier.embed(o.victim, o.data, seed=o.seed), frontier.verify),
}
"""Key name -> how it is made and judged. Watermarks (``WATERMARKS``) make their own marked victim."""
METHODS = {"SAC-m": ("SAC-m", "probabilities"), "SAC-m labels": ("SAC-m", "labels"),
           "SAC-w": ("SAC-w", "probabilities"), "SAC-w labels": ("SAC-w", "labels"),
           "SAC-w all errors": ("SAC-w all errors", "probabilities"),
           "SAC-w rare errors": ("SAC-w rare errors", "probabilities"),
           "MetaFinger": ("MetaFinger", "labels"), "MetaFinger thief-aware": ("MetaFinger thief-aware", "labels"),
           "MetaFinger thief-wide": ("MetaFinger thief-wide", "labels"),
           "IPGuard": ("IPGuard", "labels"),
           **{w: (w, "labels") for w in WATERMARKS}}
"""Method as the tables name it -> (its key, what the suspect is asked)."""


def run_methods(p: dict) -> list[str]:
    """The methods a run with parameters ``p`` measures: the fingerprints and its ``watermarks``."""
    return [m for m, (key, _) in METHODS.items() if key not in WATERMARKS or key in p["watermarks"]]


def victim_of(method: str) -> str:
    """The victim whose copies ``method`` is judged on: its watermark's marked victim, or the clean one."""
    key = METHODS[method][0]
    return key if key in WATERMARKS else CLEAN


def make_keys(o: Owner, names: list[str], cache: Path) -> tuple[dict[str, KeyFile], dict[str, nn.Module], dict]:
    """The keys ``names`` by name, the marked victims of the watermarks among them, and per key its creation
    seconds (a watermark's: its victim's training, cached) and queries, or the error that stopped it."""
    keys, marked, info = {}, {}, {}
    for name in names:
        try:
            shared = o.scratch[1] if KEYS[name].scratch else 0.0  # trained on the first SAC key, before its timer
            start = time.perf_counter()
            if name in WATERMARKS:
                recipe = {"watermark": name, "base": models.digest(o.victim), "data": o.data.name, "seed": o.seed,
                          "epochs": o.p["epochs"][o.arch], **KEYS[name].recipe}
                marked[name], keys[name], record = thefts.embedded(recipe, lambda: KEYS[name].make(o), o.arch,
                                                                   o.data, cache)
                seconds = record["seconds"]
            else:
                keys[name] = KEYS[name].make(o)[1]
                seconds = time.perf_counter() - start + shared
        except NnmarkError as e:
            info[name] = {"error": str(e)}
            continue
        info[name] = {"seconds": seconds, "queries": len(keys[name].expected)}
    return keys, marked, info


def judge(model: nn.Module, key_name: str, key: KeyFile, access: str, ds: data.Dataset) -> dict:
    """A suspect's verdict on ``key``: decision, statistic, score (higher: more suspicious), p-value, queries."""
    oracle = TorchOracle(model.eval(), ds.shape, ds.num_classes)
    spec = KEYS[key_name]
    verdict = spec.verify(oracle if access == "probabilities" else LabelsOracle(oracle), key)
    score = -verdict.statistic if spec.lower_is_closer else verdict.statistic
    return {"passed": bool(verdict.passed), "statistic": verdict.statistic, "score": score,
            "p_value": verdict.details.get("p_value"), "queries": verdict.queries}


def _rows(suspects: dict[str, dict], keys: dict[str, KeyFile], methods: list[str], ds: data.Dataset,
          test: data.Split) -> dict:
    """Per suspect: its fields but the model, its test accuracy and the verdict of each of ``methods``."""
    return {name: {**{k: v for k, v in s.items() if k != "model"}, "accuracy": models.accuracy(s["model"], test),
                   "methods": {m: judge(s["model"], METHODS[m][0], keys[METHODS[m][0]], METHODS[m][1], ds)
                               for m in methods if METHODS[m][0] in keys}}
            for name, s in suspects.items()}


def audit_runs(suspects: dict[str, nn.Module], key: KeyFile, ds: data.Dataset, p: dict) -> dict[str, dict]:
    """``nnmark audit`` of ``key`` on each suspect, whole and sequentially in ``audit_orders`` query orders."""
    def ask(model: nn.Module, sequential: bool, order: int = 0) -> audit.KeyResult:
        settings = audit.Settings(secret=thefts.SECRET, alpha=p["alpha"], seed=order, sequential=sequential,
                                  batch_size=p["batch_size"])
        return audit.audit_key(TorchOracle(model.eval(), ds.shape, ds.num_classes),
                               audit.AuditKey(key.method, "", key), settings)

    out = {}
    for name, model in suspects.items():
        whole = ask(model, False)
        runs = [ask(model, True, order) for order in range(p["audit_orders"])]
        out[name] = {"whole_passed": whole.passed, "whole_queries": whole.queries,
                     "passed": [r.passed for r in runs], "queries": [r.queries for r in runs]}
    return out


# --- one victim, one seed -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """What every victim of a seed shares: the seed, the run's parameters, the owner's and the thief's data, the
    test split, the shadow build settings and the cache of derived models."""

    seed: int
    p: dict
    owner: data.Dataset
    thief: data.Dataset
    test: data.Split
    build: dict
    cache: Path
    progress: bool


def _copies(victim: nn.Module, arch: str, stage: Stage, names: tuple[str, ...] | None) -> dict[str, dict]:
    """The untouched victim and the thefts ``names`` (None: all) of it, by name."""
    return {VICTIM: {"model": victim, "arch": arch, "attack": "none", "seconds": 0.0, "cached": True},
            **thefts.steal(victim, arch, stage.thief, stage.p, stage.seed, stage.cache, stage.progress, names)}


def _judged_copies(copies: dict[str, dict], victim: nn.Module, keys: dict[str, KeyFile], methods: list[str],
                   stage: Stage) -> dict:
    """The copies' rows (``_rows``) with whether each is a theft of ``victim``."""
    victim_accuracy = models.accuracy(victim, stage.test)
    rows = _rows(copies, keys, methods, stage.owner, stage.test)
    for row in rows.values():
        row["theft"] = is_theft(victim_accuracy, row["accuracy"])
    return {"victim_accuracy": victim_accuracy, "copies": rows}


def run_victim(arch: str, victim: nn.Module, independents: dict[str, dict], stage: Stage) -> dict:
    """One victim: its pools, keys, marked victims, the thefts of each, every verdict and the audits."""
    p, owner = stage.p, stage.owner
    layout = shadow.PoolLayout(**p["pool"], epochs=p["epochs"][arch], finetune_epochs=p["finetune_epochs"])
    layouts = {name: layout.design(name, arch) for name in shadow.POOL_DESIGNS}
    pool_specs = {name: shadow.pool_specs(arch, owner.name, models.digest(victim), lay, seed=100 * stage.seed)
                  for name, lay in layouts.items()}
    pool_lists = {name: list(dict.fromkeys(s for group in specs.values() for s in group))
                  for name, specs in pool_specs.items()}
    pool = shadow.build_pool(list(dict.fromkeys(s for specs in pool_lists.values() for s in specs)), base=victim,
                             **stage.build)
    o = Owner(victim, arch, {name: metafinger.Pools(**pool.groups(specs)) for name, specs in pool_specs.items()},
              owner, p, stage.seed, stage.cache)
    names = [k for k in KEYS if k not in WATERMARKS or k in p["watermarks"]]
    keys, marked, key_info = make_keys(o, names, stage.cache)
    groups = {CLEAN: (victim, _copies(victim, arch, stage, None))}
    groups.update({w: (m, _copies(m, arch, stage, p["watermark_thefts"])) for w, m in marked.items()})
    victims = {name: _judged_copies(copies, model, keys, [m for m in METHODS if victim_of(m) == name], stage)
               for name, (model, copies) in groups.items()}
    models_of = {k: {**{f"copy: {a}": c["model"] for a, c in groups[victim_of(k)][1].items()},
                     **{n: x["model"] for n, x in independents.items()}} for k in keys}
    derived = [c for _, copies in groups.values() for c in copies.values()]
    cost = {"pool_models": {name: len(specs) for name, specs in pool_lists.items()},
            "pool_seconds": {name: _recorded_seconds(pool, specs) for name, specs in pool_lists.items()},
            "trained": len(pool.trained), "derived_trained": sum(not x["cached"] for x in derived),
            "derived_seconds": sum(x["seconds"] for x in derived)}
    return {"arch": arch, "victim_accuracy": victims[CLEAN]["victim_accuracy"], "keys": key_info, "cost": cost,
            "independents": _rows(independents, keys, list(METHODS), owner, stage.test), "victims": victims,
            "audit": {k: audit_runs(models_of[k], key, owner, p) for k, key in keys.items()}}


def run_seed(seed: int, p: dict, spec: str, progress: bool) -> dict:
    """One victim seed: the independent models, then each victim of ``victims``."""
    cache = shadow.default_cache_dir()
    owner = data.load(f"{spec}@owner")
    build = {"cache_dir": cache, "workers": p["workers"], "executor": "process" if p["workers"] > 1 else "serial",
             "progress": progress}
    stage = Stage(seed, p, owner, data.load(f"{spec}@thief"), attacker_data(owner), build,
                  derived_cache(), progress)
    victim_specs = [ShadowSpec(arch, owner.name, 100 * seed, epochs=p["epochs"][arch]) for arch in p["victims"]]
    scratch = independent_specs(spec, p, seed)
    first = shadow.build_pool(victim_specs + list(scratch.values()), **build)
    independents = {name: {"model": first.select([s])[0], "arch": s.arch, "data": s.data, "kind": "from scratch"}
                    for name, s in scratch.items()}
    independents.update(distilled(independents, p, seed, stage.cache))
    victims = {s.arch: run_victim(s.arch, first.select([s])[0], independents, stage)
               for s in tqdm(victim_specs, desc="victims", disable=not progress, leave=False)}
    made = [x for x in independents.values() if x["kind"] == "distilled"]
    return {"seed": seed, "trained": len(first.trained),
            "independent_seconds": _recorded_seconds(first, list(scratch.values())),
            "distilled_trained": sum(not x["cached"] for x in made),
            "distilled_seconds": sum(x["seconds"] for x in made), "victims": victims}


def seed_row(seed: int, p: dict, spec: str, progress: bool) -> dict:
    """``run_seed``'s row, kept as JSON in ``derived_cache()/seeds`` under what decides it (the seed, the parameters,
    the data, torch's version and nnmark's source: any change of code computes it again). A run cut short resumes
    after the seeds it finished, and a rerun renders without asking again; a row read back says ``"resumed": true``
    and counts no training of this run."""
    what = {"seed": seed, "params": p, "data": spec, "torch": torch.__version__, "source": source_digest()}
    path = derived_cache() / "seeds" / f"{recipe_digest(what)}.json"
    if path.exists():
        return {**json.loads(path.read_text()), "resumed": True}
    row = run_seed(seed, p, spec, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(row).encode())
    return row


def trained_here(seeds: list[dict]) -> tuple[int, int]:
    """(shadow models, copies or distilled models) this run trained: none of a resumed seed's."""
    here = [r for r in seeds if not r.get("resumed")]
    return (sum(r["trained"] + sum(v["cost"]["trained"] for v in r["victims"].values()) for r in here),
            sum(r["distilled_trained"] + sum(v["cost"]["derived_trained"] for v in r["victims"].values())
                for r in here))


# --- scores -------------------------------------------------------------------------------------------------


def auc(positives: list[float], negatives: list[float]) -> float:
    """ROC AUC of scores (higher: more suspicious): P[positive > negative] + P[tie] / 2 over all pairs."""
    pairs = [(a > b) + (a == b) / 2 for a in positives for b in negatives]
    return sum(pairs) / len(pairs)


def past_every(positives: list[float], negatives: list[float]) -> float:
    """Threshold-free TPR at zero false claims: the share of positives scoring above every negative."""
    top = max(negatives)
    return sum(s > top for s in positives) / len(positives)


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _victim_copies(seeds: list[dict], arch: str, victim: str, attack: str) -> list[dict] | None:
    """The copy made by ``attack`` of ``victim`` in each seed, None when some seed has no such copy."""
    out = [r["victims"][arch]["victims"].get(victim, {}).get("copies", {}).get(attack) for r in seeds]
    return None if None in out else out


def method_summary(seeds: list[dict], arch: str, attack: str, method: str) -> dict | None:
    """One cell of the method x attack table over the seeds (None when the method had no key or its victim no such
    copy in some seed): the rule's TPR and false claims, threshold-free TPR, AUC, medians, queries, and the accuracy
    of the method's own copies and whether each is a theft."""
    copies = _victim_copies(seeds, arch, victim_of(method), attack)
    if copies is None or any(method not in c["methods"] for c in copies):
        return None
    verdicts = [c["methods"][method] for c in copies]
    indep = [[x["methods"][method] for x in r["victims"][arch]["independents"].values()] for r in seeds]
    pairs = [(c["score"], [x["score"] for x in ind]) for c, ind in zip(verdicts, indep)]
    return {"tpr": sum(c["passed"] for c in verdicts) / len(verdicts),
            "false_claims": sum(x["passed"] for ind in indep for x in ind),
            "independents": sum(len(ind) for ind in indep),
            "tpr_threshold_free": statistics.mean(past_every([s], neg) for s, neg in pairs),
            "auc": statistics.mean(auc([s], neg) for s, neg in pairs),
            "median_statistic": _median([c["statistic"] for c in verdicts]),
            "median_p_value": _median([c["p_value"] for c in verdicts]),
            "queries": max(c["queries"] for c in verdicts),
            "accuracy": statistics.mean(c["accuracy"] for c in copies), "theft": all(c["theft"] for c in copies)}


def summarise(seeds: list[dict], arch: str, methods: list[str]) -> dict:
    """Per attack on the ``arch`` victims: the thief's accuracy and theft status of the clean victim's copies, and
    the cell of each of ``methods``."""
    out = {}
    for attack in seeds[0]["victims"][arch]["victims"][CLEAN]["copies"]:
        rows = _victim_copies(seeds, arch, CLEAN, attack)
        out[attack] = {"accuracy": statistics.mean(r["accuracy"] for r in rows),
                       "theft": all(r["theft"] for r in rows),
                       "methods": {m: method_summary(seeds, arch, attack, m) for m in methods}}
    return out


def key_cost(seeds: list[dict], arch: str, method: str) -> float:
    """Seconds to make ``method``'s key (a watermark's: training its victim), its shadow models' recorded training
    included (mean over seeds)."""
    key = METHODS[method][0]
    victims = [r["victims"][arch] for r in seeds]
    shadows = KEYS[key].shadows
    return statistics.mean(v["keys"][key].get("seconds", 0) + (v["cost"]["pool_seconds"][shadows] if shadows else 0)
                           for v in victims)


def _survives(c: dict | None) -> bool:
    return bool(c and c["theft"] and c["tpr"] == 1 and c["false_claims"] == 0)


def survivors(summary: dict, seeds: list[dict], arch: str) -> dict[str, list[str]]:
    """Per attack: the methods whose own rule matches every copy that is a theft and claims no independent model,
    cheapest first (fewest verification queries, then least key-creation time)."""
    out = {}
    for attack, row in summary.items():
        ok = [m for m, c in row["methods"].items() if _survives(c)]
        out[attack] = sorted(ok, key=lambda m: (row["methods"][m]["queries"], key_cost(seeds, arch, m)))
    return out


# --- report -------------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _mark(c: dict | None) -> str:
    """A survival cell: MATCH when the rule matches every copy, its false claims, or why there is nothing to judge."""
    if c is None:
        return "not measured"
    if not c["theft"]:
        return f"not a theft ({_pct(c['accuracy'])})"
    return ("MATCH" if c["tpr"] == 1 else "no match") + (f" ({c['false_claims']} false)" if c["false_claims"] else "")


def survival_table(summary: dict, best: dict[str, list[str]]) -> str:
    """Which method survives which theft: per attack, the thief's accuracy (clean victim), each method's mark on its
    own victim's copy, the cheapest survivor. Attacks no victim's copy survived as a theft are left out."""
    methods = list(next(iter(summary.values()))["methods"])
    rows = [[a, _pct(r["accuracy"]), *(_mark(r["methods"][m]) for m in methods), (best[a] or ["none"])[0]]
            for a, r in summary.items() if any(c and c["theft"] for c in r["methods"].values())]
    return table(["theft", "thief accuracy", *methods, "cheapest surviving method"], rows)


def false_claims(seeds: list[dict], arch: str) -> str:
    """The independent models each method's rule claims (all seeds), or that none is claimed."""
    claimed = {m: sorted({name for r in seeds for name, x in r["victims"][arch]["independents"].items()
                          if x["methods"].get(m, {}).get("passed")}) for m in METHODS}
    found = [f"{m}: {', '.join(names)}" for m, names in claimed.items() if names]
    return "False claims: " + ("; ".join(found) if found else "none") + "."


def method_table(summary: dict, method: str) -> str:
    """One method's cells: its copies' accuracy, TPR (rule) and its false claims, threshold-free TPR, AUC, medians,
    queries."""
    rows = []
    for attack, r in summary.items():
        c = r["methods"][method]
        if c is None:
            continue
        rows.append([attack + ("" if c["theft"] else " (not a theft)"), _pct(c["accuracy"]), _pct(c["tpr"]),
                     f"{c['false_claims']}/{c['independents']}", _pct(c["tpr_threshold_free"]), f"{c['auc']:.2f}",
                     _num(c["median_statistic"]), _num(c["median_p_value"]), c["queries"]])
    if not rows:
        return "Nothing judged: the method made no key on some seed (the cost table gives the error)."
    return table(["attack", "thief accuracy", "TPR (rule)", "false claims", "TPR (past every independent)", "AUC",
                  "median statistic", "median p-value", "queries"], rows)


def independent_table(seeds: list[dict], arch: str) -> str:
    """The independent models of seed 0: kind, half, accuracy, each method's statistic on them (match: *)."""
    rows = []
    independents = seeds[0]["victims"][arch]["independents"]
    for name, r in independents.items():
        cells = [f"{_num(c['statistic'])}{' *' if c['passed'] else ''}" for c in r["methods"].values()]
        rows.append([name, r["kind"], r["data"].rpartition("@")[2], _pct(r["accuracy"]), *cells])
    methods = list(next(iter(independents.values()))["methods"])
    return table(["independent model", "kind", "half", "accuracy", *methods], rows)


def cost_table(seeds: list[dict], arch: str, methods: list[str]) -> str:
    """Per method of ``methods`` (mean over seeds): key creation seconds (a watermark's: training its marked
    victim), shadow or calibration models and their training seconds, verification queries, its victim's accuracy."""
    victims = [r["victims"][arch] for r in seeds]
    rows = []
    for method in methods:
        key = METHODS[method][0]
        infos = [v["keys"][key] for v in victims]
        made = [i for i in infos if "seconds" in i]
        shadows = KEYS[key].shadows
        own = [v["victims"][victim_of(method)] for v in victims if victim_of(method) in v["victims"]]
        asked = [x["copies"][VICTIM]["methods"][method]["queries"] for x in own if made]
        rows.append([method, f"{statistics.mean(i['seconds'] for i in made):.1f} s" if made else infos[0]["error"],
                     victims[0]["cost"]["pool_models"][shadows] if shadows else 0,
                     f"{statistics.mean(v['cost']['pool_seconds'][shadows] for v in victims):.0f} s"
                     if shadows else "-",
                     max(asked) if asked else "-",
                     _pct(statistics.mean(x["victim_accuracy"] for x in own) if own else None)])
    return table(["method", "key creation", "shadow / calibration models", "their training",
                  "verification queries (the key's and its null's)", "its victim's accuracy"], rows)


def _audit_counts(seeds: list[dict], arch: str, key: str) -> dict:
    """Over the seeds: the audit runs of ``key`` on its copies that are thefts and on the independent models."""
    thief, indep = [], []
    for r in seeds:
        v = r["victims"][arch]
        copies = v["victims"][victim_of(key)]["copies"]
        for name, run_ in v["audit"].get(key, {}).items():
            attack = name.removeprefix("copy: ")
            if attack == name:
                indep.append(run_)
            elif copies[attack]["theft"]:
                thief.append(run_)
    return {"thefts": thief, "independents": indep}


def audit_table(seeds: list[dict], arch: str, alpha: float) -> str:
    """Per key: ``nnmark audit``'s sequential decision on the thefts (MATCHes and queries against the whole key's)
    and its false claims over the independent models, sequential and whole, beside alpha."""
    rows = []
    for key in dict.fromkeys(k for r in seeds for k in r["victims"][arch]["audit"]):
        c = _audit_counts(seeds, arch, key)
        seq = [(p, q) for x in c["thefts"] for p, q in zip(x["passed"], x["queries"])]
        claims = [p for x in c["independents"] for p in x["passed"]]
        rows.append([key, f"{sum(p for p, _ in seq)}/{len(seq)}",
                     f"{sum(x['whole_passed'] for x in c['thefts'])}/{len(c['thefts'])}",
                     f"{statistics.median(q for _, q in seq):g}" if seq else "-",
                     f"{statistics.median(x['whole_queries'] for x in c['thefts']):g}" if seq else "-",
                     f"{sum(claims)}/{len(claims)}",
                     f"{sum(x['whole_passed'] for x in c['independents'])}/{len(c['independents'])}", f"{alpha:g}"])
    return table(["key", "thefts MATCHed, sequential", "whole key", "median queries to a decision", "whole key",
                  "false claims, sequential", "whole key", "alpha"], rows)


GOALS = ((0.99, "distillation and extraction", ("distill", "extract labels,", "extract probabilities")),
         (0.9, "extraction + adversarial training", ("extract labels + adversarial",)))
"""The issue's SAC goals: least AUC, the thefts it names, and the catalogue names that start with them."""
SAC_GOAL_KEYS = ("SAC-m", "SAC-w", "SAC-w rare errors")
"""The SAC keys each goal is checked for: the paper's two query sets (probabilities), and the 100 rarest errors of
the victim (one-hot labels)."""


def _auc_goal(summaries: dict[str, dict], method: str, want: float, what: str, prefixes: tuple[str, ...]) -> str:
    """Whether the SAC key ``method`` reaches AUC ``want`` on every theft named by ``prefixes``, on every victim."""
    cells = {f"{a} ({ARCH_NAMES.get(arch, arch)})": c for arch, summary in summaries.items()
             for a, r in summary.items() if a.startswith(prefixes) and (c := r["methods"].get(method)) and c["theft"]}
    if not cells:
        return f"- {method} AUC >= {want:g} against {what}: not measured (no theft kept its accuracy, or no key)."
    low = [f"{a} ({c['auc']:.2f})" for a, c in cells.items() if c["auc"] < want]
    return f"- {method} AUC >= {want:g} against {what}: " + (f"REFUTED by {', '.join(low)}." if low else "met.")


def goals(summaries: dict[str, dict], best: dict[str, dict[str, list[str]]]) -> str:
    """The issue's measurable goals, each met or refuted by this run's numbers (every victim architecture)."""
    stolen = [(arch, a) for arch, summary in summaries.items() for a, r in summary.items()
              if a != VICTIM and any(c and c["theft"] for c in r["methods"].values())]
    missed = [f"{a} ({ARCH_NAMES.get(arch, arch)})" for arch, a in stolen
              if not any(summaries[arch][a]["methods"][m]["queries"] <= 100 for m in best[arch][a])]
    first = (f"- Every theft MATCHed by some method at <= 100 queries with zero false claims: "
             f"{'met' if not missed else 'REFUTED for ' + '; '.join(missed)} "
             f"({len(stolen) - len(missed)} of {len(stolen)} thefts).")
    return "\n".join([first, *(_auc_goal(summaries, method, *goal) for method in SAC_GOAL_KEYS for goal in GOALS)])


METAFINGER_GOAL = (0.95, 1e-6, ("RTAL", "prune 70% + fine-tune", "noise alpha=1 + fine-tune"))
"""The issue's MetaFinger goal: least query accuracy, largest p-value, and the thefts it names."""
METAFINGER_GOAL_KEYS = ("MetaFinger thief-aware", "MetaFinger thief-wide")
"""The keys with thief-aware pools the goal is checked for."""


def metafinger_goal(seeds: list[dict], archs: list[str], key: str) -> str:
    """Whether ``key`` reaches the query accuracy of ``METAFINGER_GOAL`` on every copy of its thefts, on every seed
    and victim, with p below its bound against every independent model of that seed: the binomial tail of the
    copy's hits with the most agreeing independent model's query accuracy as the null rate."""
    want, max_p, attacks = METAFINGER_GOAL
    judged, short = 0, []
    for arch in archs:
        for r in seeds:
            v = r["victims"][arch]
            rates = [x["methods"][key]["statistic"] for x in v["independents"].values() if key in x["methods"]]
            if not rates:
                continue
            closest = max(rates)
            for attack in attacks:
                copy = v["victims"][CLEAN]["copies"].get(attack)
                if not copy or not copy["theft"] or key not in copy["methods"]:
                    continue
                cell = copy["methods"][key]
                p = binomial_tail(round(cell["statistic"] * cell["queries"]), cell["queries"], closest)
                judged += 1
                if cell["statistic"] < want or p >= max_p:
                    short.append(f"{attack} ({ARCH_NAMES.get(arch, arch)}, seed {r['seed']}): "
                                 f"{cell['statistic']:.0%}, p {p:.2g}")
    head = (f"- {key} >= {want:.0%} query accuracy under {', '.join(attacks)}, p < {max_p:g} against every "
            "independent model: ")
    if not judged:
        return head + "not measured (no such theft kept its accuracy, or no key)."
    copies = f"{judged} cop{'ies' if judged > 1 else 'y'}"
    return head + (f"REFUTED by {'; '.join(short)}" if short else "met") + f" ({copies})."


def audit_goal(seeds: list[dict], archs: list[str]) -> str:
    """Whether ``nnmark audit``'s sequential decision keeps the false-claim bound: no sequential MATCH on an
    independent model that the whole key does not claim (those would be early stopping's own)."""
    extra = {}
    runs = 0
    for arch in archs:
        for r in seeds:
            for key, suspects in r["victims"][arch]["audit"].items():
                for name, x in suspects.items():
                    if name.startswith("copy: "):
                        continue
                    runs += len(x["passed"])
                    if not x["whole_passed"] and any(x["passed"]):
                        extra.setdefault(f"{key} ({ARCH_NAMES.get(arch, arch)})", []).append(
                            f"{name}, {sum(x['passed'])} of {len(x['passed'])} orders")
    found = "; ".join(f"{k}: {', '.join(v)}" for k, v in extra.items())
    return ("- `nnmark audit` decides these cases sequentially with the false-claim bound kept: "
            + (f"REFUTED: sequential MATCH on independent models the whole key does not claim ({found})." if extra
               else f"met (no sequential MATCH on an independent model the whole key does not claim; {runs} runs)."))


def reductions(p: dict) -> list[str]:
    """What the run ``p`` left out of the issue's design (``ISSUE``), and what no run measures yet."""
    out = list(NOT_MEASURED)
    if p["seeds"] < ISSUE["seeds"]:
        out.append(f"{p['seeds']} victim seed(s), not {ISSUE['seeds']}")
    out += [f"no {ARCH_NAMES.get(a, a)} victim" for a in ISSUE["victims"] if a not in p["victims"]]
    out += [f"no {w} watermark" for w in ISSUE["watermarks"] if w not in p["watermarks"]]
    if p["watermarks"] and p["watermark_thefts"] is not None:
        out.append(f"the watermarked victims face {len(p['watermark_thefts'])} of the {len(thefts.catalogue())} "
                   "thefts")
    return out


def _victim_sections(result: dict, arch: str) -> list[str]:
    """The tables of one victim architecture."""
    seeds, summary, best = result["seeds"], result["summary"][arch], result["survivors"][arch]
    name = ARCH_NAMES.get(arch, arch)
    apart = [f"{a} ({_pct(r['accuracy'])})" for a, r in summary.items() if not r["theft"]]
    accuracy = statistics.mean(r["victims"][arch]["victim_accuracy"] for r in seeds)
    return [
        section(f"{name} victim: which method survives which theft",
                f"Clean {name} victim: test accuracy {_pct(accuracy)}. A theft is a copy that keeps at least its "
                "victim's accuracy minus 5 points; a watermark's copies are thefts of its own marked victim. MATCH: "
                "the method's own decision rule matches every copy; '(k false)': the same rule also claims k "
                "independent models. The cheapest surviving method matches with zero false claims at the fewest "
                "verification queries; not measured: the method made no key (see its cost) or its victim faced no "
                "such theft.", survival_table(summary, best),
                "Copies of the clean victim listed apart (lost more than 5 points, not a theft): "
                + (", ".join(apart) or "none") + ".", false_claims(seeds, arch)),
        *(section(f"{name}: {m}", method_table(summary, m), level=3) for m in run_methods(result["params"])),
        section(f"{name}: independent models (seed 0)", f"{len(seeds[0]['victims'][arch]['independents'])} models; "
                "each cell is the method's statistic (SAC: correlation distance, lower is closer; the others: query "
                "accuracy or success rate); * marks a (false) match.", independent_table(seeds, arch), level=3),
        section(f"{name}: cost", cost_table(seeds, arch, run_methods(result["params"])), level=3),
        section(f"{name}: nnmark audit, sequential, on these cases",
                audit_table(seeds, arch, result["params"]["alpha"]),
                f"{result['params']['audit_orders']} query order(s) per suspect, batches of "
                f"{result['params']['batch_size']}; SAC is asked whole (its statistic needs every query). Thefts: "
                "copies that keep their victim's accuracy, the victim itself included. Ville's bound holds each run's "
                "chance of a MATCH to alpha for a model whose match rate is at most the method's null: sequential "
                "false claims beyond the whole key's would be early stopping's; those the whole key makes too come "
                "from a null that does not fit these independent models.", level=3),
    ]


def render(result: dict) -> str:
    """ownership.md: what was reduced, per victim the survival table and the method, independent, cost and audit
    tables, then the goals."""
    seeds, p = result["seeds"], result["params"]
    shadows, derived = trained_here(seeds)
    resumed = ", ".join(str(r["seed"]) for r in seeds if r.get("resumed"))
    resumed = f"; seed(s) {resumed} read back as an earlier run of this code finished them" if resumed else ""
    return document(
        "# Ownership against a thief: fingerprints and watermarks on distilled, extracted and retrained copies",
        f"Written by `{result['command']}` on {result['date']} in {result['wall_seconds'] / 60:.1f} minutes, "
        f"training {shadows} shadow models and {derived} "
        "copies or distilled models (the rest came from the caches; each model's own training time is recorded, see "
        f"Cost){resumed}; {len(seeds)} victim seed(s); "
        f"victims {', '.join(ARCH_NAMES.get(a, a) for a in p['victims'])}; "
        f"torch {torch.__version__}. Data: {result['data']}.",
        "**Reduced against the issue:** " + "; ".join(reductions(p)) + ". Short training (parameters below) so the "
        "run fits a shared 2-core machine; see the module docstring of `nnmark.bench.ownership`.",
        f"Parameters: `{json.dumps(p)}`.",
        section("The issue's goals, checked",
                "\n".join([goals(result["summary"], result["survivors"]),
                           *(metafinger_goal(seeds, p["victims"], k) for k in METAFINGER_GOAL_KEYS),
                           audit_goal(seeds, p["victims"])])),
        *(block for arch in p["victims"] for block in _victim_sections(result, arch)),
        "Beside the methods (seed 0): the from-scratch independent models took "
        f"{seeds[0]['independent_seconds']:.0f} s of recorded training, their distillations "
        f"{seeds[0]['distilled_seconds']:.0f} s.",
        f"![statistics of copies and independent models]({stem(p)}.png)",
    )


def figure(result: dict) -> bytes:
    """ownership.png: per method, the statistic of each independent model (grey) and each of its copies (seed 0,
    the first victim architecture)."""
    v = result["seeds"][0]["victims"][result["params"]["victims"][0]]
    panels = []
    for m in run_methods(result["params"]):
        copies = v["victims"].get(victim_of(m), {}).get("copies", {})
        if m not in copies.get(VICTIM, {}).get("methods", {}):
            continue
        panels.append({"title": m, "negatives": [x["methods"][m]["statistic"] for x in v["independents"].values()],
                       "positives": {a: x["methods"][m]["statistic"] for a, x in copies.items()}})
    return plots.ownership_scores(panels)


def _kind(value) -> str:
    """The JSON kind of a parameter's value (a tuple is a list)."""
    kinds = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "an object", list: "a list", tuple: "a list"}
    return kinds.get(type(value), type(value).__name__)


def check_overrides(overrides: dict) -> None:
    """Refuse (``ArgumentError``) an override that names no parameter of ``FULL``, whose value is not of a kind the
    full or quick mode gives it (an object: with the same keys), or that names an unknown victim or watermark, before
    anything is trained: a run of hours must not fail at its end. Unknown thefts: ``thefts.select``."""
    for name, value in overrides.items():
        if name not in FULL:
            raise ArgumentError(f"bench ownership has no parameter {name!r}; it has {', '.join(FULL)}")
        kinds = {_kind(FULL[name]), _kind(QUICK[name])}
        if _kind(value) not in kinds and not (_kind(value) == "an integer" and "a number" in kinds):
            raise ArgumentError(f"{name} takes {' or '.join(sorted(kinds))}, got {_kind(value)}: {value!r}")
        if isinstance(value, dict) and set(value) != set(FULL[name]):
            raise ArgumentError(f"{name} needs the keys {', '.join(FULL[name])}, got {', '.join(map(str, value))}")
    if not overrides.get("victims", FULL["victims"]) or overrides.get("seeds", 1) < 1:
        raise ArgumentError("a run needs a victim and a seed: victims=[] or seeds < 1")
    for name, known in (("victims", FULL["victims"]), ("watermarks", WATERMARKS)):
        if unknown := [v for v in overrides.get(name, ()) if v not in known]:
            raise ArgumentError(f"{name}: unknown {unknown}; known: {', '.join(known)}")
    thefts.select(overrides.get("watermark_thefts"))


def stem(p: dict) -> str:
    """The name of the run's files: ``ownership``, or ``ownership-<victims>`` for a run without a LeNet-5 victim
    (which would otherwise overwrite the LeNet-5 tables)."""
    return STEM if "lenet5" in p["victims"] else "-".join((STEM, *p["victims"]))


def set_options(overrides: dict) -> str:
    """The ``--set NAME=JSON`` options that give ``overrides``, quoted for a shell."""
    compact = {k: json.dumps(jsonable(v), separators=(",", ":")) for k, v in overrides.items()}
    return "".join(f" --set {shlex.quote(f'{k}={v}')}" for k, v in compact.items())


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False,
        overrides: dict | None = None) -> Path:
    """Run the benchmark and write ``ownership.md`` (``stem``), ``.json`` and ``.png`` to ``out_dir``; ``overrides``
    replace parameters of the mode (a reduced run; the command it records gives them as ``--set`` options)."""
    check_overrides(overrides or {})
    p = {**parameters(FULL, QUICK, quick=quick, seeds=seeds), **(overrides or {})}
    start = time.perf_counter()
    spec, note = dataset_spec(p, derived_cache())
    rows = [seed_row(s, p, spec, progress) for s in tqdm(range(p["seeds"]), desc="seeds", disable=not progress)]
    summary = {arch: summarise(rows, arch, run_methods(p)) for arch in p["victims"]}
    result = {**header(STEM, p, quick=quick, seeds=seeds), "data": note, "seeds": rows, "summary": summary,
              "survivors": {arch: survivors(summary[arch], rows, arch) for arch in p["victims"]},
              "wall_seconds": time.perf_counter() - start}
    result["command"] += set_options(overrides or {})
    return write(out_dir, stem(p), result, render(result), figure(result))
