"""``nnmark bench ownership-api``: DAWN, the API that watermarks what is extracted through it, on Fashion-MNIST.

The setting of ``nnmark bench ownership`` (its data halves, victims, independent models and caches): per victim
seed, a LeNet-5 victim on ``fashion-mnist@owner`` is served through ``dawn.DawnOracle`` (rate ``rate``). The thief
sends one query per image of its half (``@thief``, 30,000 images, in a seeded order) and trains copies on the
answers (``attacks.extract.extract_from``, against the served API as against an endpoint): top-1 labels or
probabilities, into the victim's architecture or VGG-11, for the ownership bench's ``theft_epochs`` (a thief that
stops early) and for ``long_epochs`` (one that trains to convergence: LeNet-5 30 epochs, ``nnmark attack extract``'s
default; VGG-11 10, to fit 2 cores);
then the long copy adversarially trained (PGD, ``thefts.adversarial``). The record the API kept of that thief's
queries makes the seed's DAWN key (``dawn.create``, ``n`` queries); every copy and every independent model is
judged on it. A copy counts as a theft only while it keeps the victim's accuracy minus 5 points.

The independent models are ``bench ownership``'s (three architectures, both halves, distillations of independent
teachers) of its first ``independent_seeds`` seeds, shared by every victim seed's key: no independent model ever
asked the API, so each is as independent of one key as of another. DAWN's null is exact (``dawn``'s docstring),
so they check the bound, they do not set it.

Reported: the served accuracy beside the victim's (what the watermark costs honest clients), the record's size,
and per theft the thief's accuracy, hits / departures / p-value per seed, the true-positive rate at zero false
claims, the ROC AUC of the watermark accuracy against the independent models, and the false claims.

The thefts that hold the weights (distillation, fine-tuning, pruning: ``bench ownership``) never ask the API, so
DAWN has nothing to say about them; they are not run here.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark.attacks.adversarial import adversarial_train
from nnmark.attacks.distill import build_student
from nnmark.attacks.extract import extract_from, query_set
from nnmark.attacks.measure import is_theft
from nnmark.bench import ownership, thefts
from nnmark.bench.common import document, header, parameters, section, table, write
from nnmark.data.roles import attacker_data
from nnmark.keys import KeyFile
from nnmark.marks.ownership import dawn, shadow
from nnmark.marks.ownership.shadow import ShadowSpec
from nnmark.oracles import LabelsOracle, TorchOracle

STEM = "ownership-api"
VICTIM_ARCH = "lenet5"
SECRET = b"nnmark-bench-dawn"
"""The bench owner's secret (a bench's, not an owner's)."""
FULL = {"seeds": 3, "subset": None, "epochs": ownership.FULL["epochs"], "theft_epochs": ownership.FULL["theft_epochs"],
        "long_epochs": {"lenet5": 30, "vgg11": 10}, "finetune_epochs": ownership.FULL["finetune_epochs"],
        "independents": ownership.FULL["independents"], "distilled": ownership.FULL["distilled"],
        "independent_seeds": 1, "rate": dawn.RATE, "n": 100, "workers": 2}
QUICK = {"seeds": 1, "subset": (3000, 1000), "epochs": ownership.QUICK["epochs"], "theft_epochs": 4,
         "long_epochs": {"lenet5": 12, "vgg11": 4}, "finetune_epochs": 1,
         "independents": {"lenet5": (1, 1), "vgg11": (0, 0), "resnet20": (0, 0)}, "distilled": (),
         "independent_seeds": 1, "rate": 0.05, "n": 20, "workers": 1}
STOPS_EARLY = "extract labels, same arch, stops early"


def catalogue(p: dict) -> dict[str, dict]:
    """The thefts through the API by name: answers, student architecture, epochs, and the PGD radius of an adversarial
    fine-tune of the long same-architecture label copy (``base``)."""
    long = p["long_epochs"]
    return {
        STOPS_EARLY: {"answers": "labels", "arch": VICTIM_ARCH, "epochs": p["theft_epochs"]},
        "extract labels, same arch": {"answers": "labels", "arch": VICTIM_ARCH, "epochs": long[VICTIM_ARCH]},
        "extract probabilities, same arch": {"answers": "probabilities", "arch": VICTIM_ARCH,
                                             "epochs": long[VICTIM_ARCH]},
        "extract labels, vgg11": {"answers": "labels", "arch": "vgg11", "epochs": long["vgg11"]},
        **{f"extract labels + adversarial eps={eps:g}": {"base": "extract labels, same arch", "eps": eps,
                                                         "epochs": p["finetune_epochs"]}
           for eps in thefts.ADVERSARIAL_EPS},
    }


def served_copies(victim, owner: data.Dataset, thief: data.Dataset, p: dict, seed: int, cache: Path) -> dict:
    """The thief's copies through the DAWN-served victim, by name: {model, arch, seconds, cached}."""
    api = dawn.DawnOracle(TorchOracle(victim, owner.shape, owner.num_classes), SECRET, rate=p["rate"])
    out: dict[str, dict] = {}
    for name, t in catalogue(p).items():
        recipe = {"attack": "dawn extract", "victim": models.digest(victim), "rate": p["rate"], "data": thief.name,
                  "seed": thefts.theft_seed(seed), **{k: v for k, v in t.items() if k != "base"}}
        if "base" in t:
            base = out[t["base"]]
            recipe["base"] = models.digest(base["model"])

            def make(base=base, t=t):
                return adversarial_train(base["model"], thief.train.x, thief.train.y, **thefts.adversarial(t["eps"]),
                                         epochs=t["epochs"], seed=recipe["seed"])[0]
            arch = base["arch"]
        else:
            def make(t=t):
                student = build_student(t["arch"], owner.shape, owner.num_classes, recipe["seed"])
                return extract_from(api, thief.train.x, student, answers=t["answers"], epochs=t["epochs"],
                                    seed=recipe["seed"])[0]
            arch = t["arch"]
        model, record = thefts.trained(recipe, make, arch, thief, cache)
        out[name] = {"model": model, "arch": arch, **record}
    return out


def record_key(victim, owner: data.Dataset, thief: data.Dataset, p: dict, seed: int) -> KeyFile:
    """The DAWN key of the thief's queries: the API answers them again into a fresh record (its answers are the
    same each time), from which ``dawn.create`` draws ``n``."""
    queries = query_set(thief.train.x, len(thief.train.x), gen=torch.Generator().manual_seed(thefts.theft_seed(seed)))
    model = TorchOracle(victim, owner.shape, owner.num_classes)
    with tempfile.TemporaryDirectory() as folder:
        api = dawn.DawnOracle(model, SECRET, rate=p["rate"], record=dawn.Record(folder, SECRET))
        api.labels(queries)
        return dawn.create(model, folder, n=p["n"], seed=seed, secret=SECRET)


def judge(model, key: KeyFile, ds: data.Dataset) -> dict:
    """A suspect's DAWN verdict, asked for labels only."""
    v = dawn.verify(LabelsOracle(TorchOracle(model.eval(), ds.shape, ds.num_classes)), key)
    return {"passed": bool(v.passed), "statistic": v.statistic, "hits": v.details["hits"],
            "departures": v.details["departures"], "p_value": v.details["p_value"], "queries": v.queries}


def independent_models(spec: str, p: dict, build: dict) -> dict[str, dict]:
    """``bench ownership``'s independent models of its first ``independent_seeds`` seeds, by name (seed-tagged)."""
    out = {}
    for s in range(p["independent_seeds"]):
        specs = ownership.independent_specs(spec, p, s)
        pool = shadow.build_pool(list(specs.values()), **build)
        found = {name: {"model": m, "arch": sp.arch, "data": sp.data}
                 for (name, sp), m in zip(specs.items(), pool.models)}
        found.update(ownership.distilled(found, p, s, ownership.derived_cache()))
        out.update({f"{name} (seed {s})": x for name, x in found.items()})
    return out


def run_seed(seed: int, p: dict, spec: str, independents: dict, build: dict, progress: bool) -> dict:
    """One victim seed: the victim, its served accuracy, the thief's copies, the key and every verdict."""
    owner, thief = data.load(f"{spec}@owner"), data.load(f"{spec}@thief")
    victim = shadow.build_pool([ShadowSpec(VICTIM_ARCH, owner.name, 100 * seed, epochs=p["epochs"][VICTIM_ARCH])],
                               **build)[0]
    test = attacker_data(owner)
    victim_accuracy = models.accuracy(victim, test)
    api = dawn.DawnOracle(TorchOracle(victim, owner.shape, owner.num_classes), SECRET, rate=p["rate"])
    served_accuracy = float((api.labels(test.x) == test.y).float().mean())
    copies = served_copies(victim, owner, thief, p, seed, ownership.derived_cache())
    key = record_key(victim, owner, thief, p, seed)
    rows = {}
    for name, c in tqdm(copies.items(), desc="copies", disable=not progress, leave=False):
        accuracy = models.accuracy(c["model"], test)
        rows[name] = {"accuracy": accuracy, "theft": is_theft(victim_accuracy, accuracy), "seconds": c["seconds"],
                      **judge(c["model"], key, owner)}
    return {"seed": seed, "victim_accuracy": victim_accuracy, "served_accuracy": served_accuracy,
            "recorded": key.config["recorded"], "kept": len(key.expected), "copies": rows,
            "independents": {name: judge(x["model"], key, owner) for name, x in independents.items()}}


# --- report -------------------------------------------------------------------------------------------------

def summary(seeds: list[dict], name: str) -> dict:
    """One theft over the seeds: thief accuracy, thefts, TPR by the rule, false claims, the threshold-free TPR, AUC."""
    cells = [s["copies"][name] for s in seeds]
    negatives = [x["statistic"] for s in seeds for x in s["independents"].values()]
    positives = [c["statistic"] for c in cells]
    return {"accuracy": statistics.mean(c["accuracy"] for c in cells), "thefts": sum(c["theft"] for c in cells),
            "tpr": sum(c["passed"] for c in cells) / len(cells),
            "false_claims": sum(x["passed"] for s in seeds for x in s["independents"].values()),
            "judged": len(negatives), "past_every": ownership.past_every(positives, negatives),
            "auc": ownership.auc(positives, negatives),
            "per_seed": [f"{c['hits']}/{c['departures']}, p {c['p_value']:.2g}" for c in cells]}


def theft_table(result: dict) -> str:
    rows = []
    for name, s in result["summary"].items():
        rows.append([name, f"{s['accuracy']:.1%}", f"{s['thefts']}/{len(result['seeds'])}", f"{s['tpr']:.0%}",
                     f"{s['false_claims']}/{s['judged']}", f"{s['past_every']:.0%}", f"{s['auc']:.2f}",
                     "; ".join(s["per_seed"])])
    return table(["theft through the API", "thief accuracy", "thefts", "TPR (rule)", "false claims",
                  "TPR (past every independent)", "AUC", "hits / departures, p-value per seed"], rows)


def independent_table(result: dict) -> str:
    values = [x for s in result["seeds"] for x in s["independents"].values()]
    worst = min(values, key=lambda x: x["p_value"])
    return table(["independent models", "judgments", "most hits", "most departures", "smallest p-value", "claimed"],
                 [[len(result["seeds"][0]["independents"]), len(values), max(x["hits"] for x in values),
                   max(x["departures"] for x in values), f"{worst['p_value']:.2g}",
                   sum(x["passed"] for x in values)]])


def seed_table(result: dict) -> str:
    return table(["seed", "victim accuracy", "served accuracy", "recorded watermarks", "key queries"],
                 [[s["seed"], f"{s['victim_accuracy']:.2%}", f"{s['served_accuracy']:.2%}", s["recorded"], s["kept"]]
                  for s in result["seeds"]])


def render(result: dict) -> str:
    p = result["params"]
    return document(
        "# DAWN: a served API watermarks what a thief extracts through it (Fashion-MNIST, LeNet-5 victim)",
        f"Written by `{result['command']}` on {result['date']} in {result['wall_seconds'] / 60:.1f} minutes; "
        f"torch {torch.__version__}. Data: {result['data']}. Rate r_w = {p['rate']}, alpha = 2^-64, "
        f"{p['n']} key queries. Parameters: `{json.dumps(p)}`. See the module docstring of `nnmark.bench.dawn`.",
        section("The victims, served", "The served accuracy is what honest clients get through DAWN (measured on "
                "the held-out half of the test split); the record holds the thief's watermarked queries.",
                seed_table(result)),
        section("Which theft through the API DAWN catches",
                "A theft keeps at least the victim's accuracy minus 5 points. Hits: the key's queries the copy "
                "labels F_w(x); departures: those it labels other than F(x); the p-value is P[Bin(departures, "
                "1/(K-1)) >= hits], exact for a model that never asked the API. MATCH below 2^-64.",
                theft_table(result)),
        section("Independent models", "Every independent model judged on every seed's key.",
                independent_table(result)),
    )


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False) -> Path:
    """Run the bench and write ``ownership-api.md`` and ``.json`` to ``out_dir``."""
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    start = time.perf_counter()
    spec, note = ownership.dataset_spec(p, ownership.derived_cache())
    build = {"cache_dir": shadow.default_cache_dir(), "workers": p["workers"],
             "executor": "process" if p["workers"] > 1 else "serial", "progress": progress}
    independents = independent_models(spec, p, build)
    rows = [run_seed(s, p, spec, independents, build, progress)
            for s in tqdm(range(p["seeds"]), desc="seeds", disable=not progress)]
    result = {**header(STEM, p, quick=quick, seeds=seeds), "data": note, "seeds": rows,
              "summary": {name: summary(rows, name) for name in catalogue(p)},
              "wall_seconds": time.perf_counter() - start}
    return write(out_dir, STEM, result, render(result))
