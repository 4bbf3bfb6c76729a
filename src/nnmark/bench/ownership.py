"""``nnmark bench ownership``: ownership keys against a thief, judged the field's way, on Fashion-MNIST.

Layout (issue "Ownership that survives a thief"): the owner trains a LeNet-5 victim on the owner half of the
training split (``fashion-mnist@owner``); the thief holds the other half (``@thief``). Independent models, trained
with other seeds on either half, of three architectures (LeNet-5, narrow VGG-11, ResNet-20), plus distillations of
*other* independent teachers (the hardest negatives), form the false-claim side. The thief's copies
(``nnmark.bench.thefts``: distillation at T = 3 into the same and another architecture, extraction with labels or
probabilities into the same and another architecture, extraction then PGD adversarial training at eps 0.05 and 0.1,
RTAL, prune 70% / 90% + fine-tune, noise alpha = 1 + fine-tune, fine-pruning) form the positive side; a copy counts
as a theft only while it keeps the victim's test accuracy minus 5 points (``attacks.measure.is_theft``), the others
are listed apart.

Methods (their keys made from the victim; shadow models from ``marks.ownership.shadow`` with MetaFinger's paper
pools of LeNet-5 on the owner half, cached under its ``default_cache_dir()``): SAC-m and SAC-w (probabilities, and
the same key asked for labels only: one-hot correlation), both calibrated on the pools' negative models; MetaFinger
(paper pools); IPGuard. Per method x attack: the true-positive rate under the method's own rule and the count of
independent models that rule falsely claims, the threshold-free TPR (copies scoring past the most suspicious
independent model), ROC AUC of the statistic (copies vs independents; ties count half), the median statistic and
p-value, queries, and the thief's accuracy. Test accuracy is measured on the second half of the test split (the
first half is the pool SAC draws its queries from).

Not yet measured (say so in the report, ``NOT_MEASURED``): a ResNet-20 victim, more than one victim seed in the
committed run, MetaFinger's thief-aware pools, and the watermarks that must be embedded at training (coupled,
Zhang, Adi, frontier).

Runtime knobs (``FULL`` / ``QUICK``): ``subset`` (train, test images of Fashion-MNIST kept; None: all 60k / 10k),
``epochs`` per architecture of from-scratch models, ``theft_epochs`` (distillation and extraction passes over the
thief's 30k images), ``finetune_epochs`` (RTAL, pruning, noise, fine-pruning, adversarial training), ``pool``
(MetaFinger's negatives, validation negatives, augmentation factor), ``independents`` (per architecture: models on
the owner half, on the thief half), ``distilled`` (teacher, student architecture), ``n`` queries per key,
``candidates`` (MetaFinger's starting images), ``meta_epochs``, ``ipguard_iterations``, ``workers`` (shadow training
processes). The full mode's sizes (one victim seed, 2-4 epochs per model) are chosen to fit about 40 minutes of a
shared 2-core machine with empty caches; the quick mode (a 3,000 / 1,000 image subset, mnist5k when Fashion-MNIST is
not installed) runs in about a minute for the test.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark._io import atomic_write_bytes
from nnmark.attacks.distill import SOK_TEMPERATURE
from nnmark.attacks.measure import is_theft
from nnmark.bench import plots, thefts
from nnmark.bench.common import document, header, parameters, section, table, write
from nnmark.data.roles import attacker_data
from nnmark.errors import DataError, NnmarkError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import ipguard, metafinger, sac, shadow
from nnmark.marks.ownership.shadow import ShadowSpec
from nnmark.oracles import LabelsOracle, TorchOracle

STEM = "ownership"
DATA = "fashion-mnist"
FALLBACK = "mnist5k"
VICTIM_ARCH = "lenet5"
FULL = {
    "seeds": 1, "subset": None, "epochs": {"lenet5": 4, "vgg11": 3, "resnet20": 2}, "theft_epochs": 4,
    "finetune_epochs": 2, "pool": {"negatives": 3, "val_negatives": 2, "af": 2}, "n": 100, "candidates": 200,
    "meta_epochs": 10,
    "ipguard_iterations": 1000, "workers": 2,
    "independents": {"lenet5": (4, 4), "vgg11": (3, 3), "resnet20": (1, 2)},
    "distilled": (("lenet5 thief #1", "lenet5"), ("vgg11 thief #1", "lenet5"), ("lenet5 owner #1", "vgg11"),
                  ("resnet20 thief #1", "lenet5")),
}
QUICK = {
    "seeds": 1, "subset": (3000, 1000), "epochs": {"lenet5": 4, "vgg11": 2, "resnet20": 1}, "theft_epochs": 4,
    "finetune_epochs": 1, "pool": {"negatives": 3, "val_negatives": 2, "af": 2}, "n": 20, "candidates": 80,
    "meta_epochs": 10, "ipguard_iterations": 500, "workers": 1,
    "independents": {"lenet5": (1, 1), "vgg11": (0, 1), "resnet20": (0, 1)},
    "distilled": (("vgg11 thief #1", "lenet5"),),
}
METHODS = {"SAC-m": ("SAC-m", "probabilities"), "SAC-m labels": ("SAC-m", "labels"),
           "SAC-w": ("SAC-w", "probabilities"), "SAC-w labels": ("SAC-w", "labels"),
           "MetaFinger": ("MetaFinger", "labels"), "IPGuard": ("IPGuard", "labels")}
"""Method as the tables name it -> (its key, what the suspect is asked)."""
VERIFY = {sac.METHOD: sac.verify, metafinger.METHOD: metafinger.verify, ipguard.METHOD: ipguard.verify}
NOT_MEASURED = ("MetaFinger with thief-aware pools", "coupled watermark (direct and invisible)", "Zhang", "Adi",
                "frontier stitching", "a ResNet-20 victim", "more than one victim seed (full mode: 1)")
VICTIM = "none (the victim itself)"
"""The row of the untouched victim: every method must match it."""


# --- data and models ----------------------------------------------------------------------------------------


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
    for teacher, student in p["distilled"]:
        t = independents[teacher]
        options = {"temperature": SOK_TEMPERATURE, "alpha": 1.0, "student_arch": student}
        recipe = {"attack": "distill", "options": options, "seed": seed, "epochs": p["theft_epochs"]}
        model, record = thefts.derive(recipe, t["model"], t["arch"], data.load(t["data"]), cache)
        out[f"{student} distilled from {teacher}"] = {"model": model, "arch": student, "data": t["data"],
                                                      "kind": "distilled", **record}
    return out


def _recorded_seconds(pool: shadow.ShadowPool, specs: list[ShadowSpec]) -> float:
    """Training seconds the shadow cache recorded for ``specs`` (each as built, whenever that was)."""
    index = dict(zip(pool.specs, pool.paths))
    return sum(json.loads(index[s].with_suffix(".json").read_text())["seconds"] for s in dict.fromkeys(specs))


# --- keys and verdicts --------------------------------------------------------------------------------------


def make_keys(victim: nn.Module, pools: metafinger.Pools, owner: data.Dataset, p: dict,
              seed: int) -> tuple[dict[str, KeyFile], dict[str, dict]]:
    """The victim's keys by name, and per key its creation seconds and queries (or the error that stopped it)."""
    starts = owner.train.x[torch.randperm(len(owner.train), generator=torch.Generator().manual_seed(seed))[: p["n"]]]
    makers = {
        "SAC-m": lambda: sac.create(victim, pools, owner.train.x, variant="m", n=p["n"], seed=seed, dataset=owner),
        "SAC-w": lambda: sac.create(victim, pools, owner.train.x, variant="w", n=p["n"], seed=seed, dataset=owner),
        "MetaFinger": lambda: metafinger.create(victim, pools, owner.train.x,
                                                metafinger.Settings(n=p["n"], candidates=p["candidates"],
                                                                    epochs=p["meta_epochs"]), seed=seed),
        "IPGuard": lambda: ipguard.create(TorchOracle(victim, owner.shape, owner.num_classes), starts,
                                          iterations=p["ipguard_iterations"], seed=seed),
    }
    keys, info = {}, {}
    for name, make in makers.items():
        start = time.perf_counter()
        try:
            keys[name] = make()
        except NnmarkError as e:
            info[name] = {"error": str(e)}
            continue
        info[name] = {"seconds": time.perf_counter() - start, "queries": len(keys[name].expected)}
    return keys, info


def judge(model: nn.Module, key: KeyFile, access: str, ds: data.Dataset) -> dict:
    """A suspect's verdict on ``key``: decision, statistic, score (higher: more suspicious), p-value, queries."""
    oracle = TorchOracle(model.eval(), ds.shape, ds.num_classes)
    verdict = VERIFY[key.method](oracle if access == "probabilities" else LabelsOracle(oracle), key)
    score = -verdict.statistic if key.method == sac.METHOD else verdict.statistic
    return {"passed": bool(verdict.passed), "statistic": verdict.statistic, "score": score,
            "p_value": verdict.details.get("p_value"), "queries": verdict.queries}


def _rows(suspects: dict[str, dict], keys: dict[str, KeyFile], ds: data.Dataset, test: data.Split) -> dict:
    """Per suspect: its fields but the model, its test accuracy and every method's verdict."""
    return {name: {**{k: v for k, v in s.items() if k != "model"}, "accuracy": models.accuracy(s["model"], test),
                   "methods": {m: judge(s["model"], keys[k], access, ds)
                               for m, (k, access) in METHODS.items() if k in keys}}
            for name, s in suspects.items()}


def run_seed(seed: int, p: dict, spec: str, progress: bool) -> dict:
    """One victim seed: victim, pools, independent models, keys, thefts, and every verdict."""
    cache = shadow.default_cache_dir()
    derived = cache.parent / "bench-ownership"
    owner, thief = data.load(f"{spec}@owner"), data.load(f"{spec}@thief")
    test = attacker_data(owner)
    build = {"cache_dir": cache, "workers": p["workers"], "executor": "process" if p["workers"] > 1 else "serial",
             "progress": progress}
    victim_spec = ShadowSpec(VICTIM_ARCH, owner.name, 100 * seed, epochs=p["epochs"][VICTIM_ARCH])
    first = shadow.build_pool([victim_spec], **build)
    victim = first[0]
    layout = shadow.PoolLayout(**p["pool"], epochs=p["epochs"][VICTIM_ARCH], finetune_epochs=p["finetune_epochs"])
    pool_specs = shadow.pool_specs(VICTIM_ARCH, owner.name, models.digest(victim), layout, seed=100 * seed)
    scratch = independent_specs(spec, p, seed)
    pool_list = [s for group in pool_specs.values() for s in group]
    pool = shadow.build_pool(pool_list + list(scratch.values()), base=victim, **build)
    keys, key_info = make_keys(victim, metafinger.Pools(**pool.groups(pool_specs)), owner, p, seed)
    independents = {name: {"model": pool.select([s])[0], "arch": s.arch, "data": s.data, "kind": "from scratch"}
                    for name, s in scratch.items()}
    independents.update(distilled(independents, p, seed, derived))
    copies = {VICTIM: {"model": victim, "arch": VICTIM_ARCH, "attack": "none", "seconds": 0.0, "cached": True},
              **thefts.steal(victim, VICTIM_ARCH, thief, p, seed, derived, progress)}
    victim_accuracy = models.accuracy(victim, test)
    rows = _rows(copies, keys, owner, test)
    for row in rows.values():
        row["theft"] = is_theft(victim_accuracy, row["accuracy"])
    derived_models = [*copies.values(), *(x for x in independents.values() if x["kind"] == "distilled")]
    cost = {"pool_models": len(dict.fromkeys(pool_list)), "pool_seconds": _recorded_seconds(pool, pool_list),
            "independent_seconds": _recorded_seconds(pool, list(scratch.values())),
            "trained": len(first.trained) + len(pool.trained),
            "derived_trained": sum(not x["cached"] for x in derived_models),
            "derived_seconds": sum(x["seconds"] for x in derived_models)}
    return {"seed": seed, "victim_accuracy": victim_accuracy, "keys": key_info, "cost": cost,
            "independents": _rows(independents, keys, owner, test), "thefts": rows}


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


def method_summary(seeds: list[dict], attack: str, method: str) -> dict | None:
    """One cell of the method x attack table over the seeds (None when the method had no key in some seed)."""
    if any(method not in r["thefts"][attack]["methods"] for r in seeds):
        return None
    copies = [r["thefts"][attack]["methods"][method] for r in seeds]
    indep = [[x["methods"][method] for x in r["independents"].values()] for r in seeds]
    pairs = [(c["score"], [x["score"] for x in ind]) for c, ind in zip(copies, indep)]
    return {"tpr": sum(c["passed"] for c in copies) / len(copies),
            "false_claims": sum(x["passed"] for ind in indep for x in ind),
            "independents": sum(len(ind) for ind in indep),
            "tpr_threshold_free": statistics.mean(past_every([s], neg) for s, neg in pairs),
            "auc": statistics.mean(auc([s], neg) for s, neg in pairs),
            "median_statistic": _median([c["statistic"] for c in copies]),
            "median_p_value": _median([c["p_value"] for c in copies]),
            "queries": max(c["queries"] for c in copies)}


def summarise(seeds: list[dict]) -> dict:
    """Per attack: the thief's accuracy, whether each seed's copy is a theft, and each method's cell."""
    out = {}
    for attack in seeds[0]["thefts"]:
        rows = [r["thefts"][attack] for r in seeds]
        out[attack] = {"accuracy": statistics.mean(r["accuracy"] for r in rows),
                       "theft": all(r["theft"] for r in rows),
                       "methods": {m: method_summary(seeds, attack, m) for m in METHODS}}
    return out


def key_cost(seeds: list[dict], method: str) -> float:
    """Seconds to make ``method``'s key, its shadow models' recorded training included (mean over seeds)."""
    key = METHODS[method][0]
    shadows = key != "IPGuard"
    return statistics.mean(r["keys"][key].get("seconds", 0) + shadows * r["cost"]["pool_seconds"] for r in seeds)


def survivors(summary: dict, seeds: list[dict]) -> dict[str, list[str]]:
    """Per attack: the methods whose own rule matches every copy and claims no independent model, cheapest first
    (fewest verification queries, then least key-creation time)."""
    out = {}
    for attack, row in summary.items():
        ok = [m for m, c in row["methods"].items() if c and c["tpr"] == 1 and c["false_claims"] == 0]
        out[attack] = sorted(ok, key=lambda m: (row["methods"][m]["queries"], key_cost(seeds, m)))
    return out


# --- report -------------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def survival_table(summary: dict, best: dict[str, list[str]]) -> str:
    """Which method survives which theft: per attack, the thief's accuracy, each method's mark, the cheapest."""
    def mark(c: dict | None) -> str:
        if c is None:
            return "no key"
        return ("MATCH" if c["tpr"] == 1 else "no match") + (f" ({c['false_claims']} false)" if c["false_claims"]
                                                               else "")
    rows = [[a, _pct(r["accuracy"]), *(mark(r["methods"][m]) for m in METHODS), (best[a] or ["none"])[0]]
            for a, r in summary.items() if r["theft"]]
    return table(["theft", "thief accuracy", *METHODS, "cheapest surviving method"], rows)


def false_claims(seeds: list[dict]) -> str:
    """The independent models each method's rule claims (all seeds), or that none is claimed."""
    claimed = {m: sorted({name for r in seeds for name, x in r["independents"].items()
                          if x["methods"].get(m, {}).get("passed")}) for m in METHODS}
    found = [f"{m}: {', '.join(names)}" for m, names in claimed.items() if names]
    return "False claims: " + ("; ".join(found) if found else "none") + "."


def method_table(summary: dict, method: str) -> str:
    """One method's cells: TPR (rule) and its false claims, threshold-free TPR, AUC, medians, queries."""
    rows = []
    for attack, r in summary.items():
        c = r["methods"][method]
        if c is None:
            continue
        rows.append([attack + ("" if r["theft"] else " (not a theft)"), _pct(r["accuracy"]), _pct(c["tpr"]),
                     f"{c['false_claims']}/{c['independents']}", _pct(c["tpr_threshold_free"]), f"{c['auc']:.2f}",
                     _num(c["median_statistic"]), _num(c["median_p_value"]), c["queries"]])
    return table(["attack", "thief accuracy", "TPR (rule)", "false claims", "TPR (past every independent)", "AUC",
                  "median statistic", "median p-value", "queries"], rows)


def independent_table(seeds: list[dict]) -> str:
    """The independent models of seed 0: architecture, data half, accuracy, each method's statistic (match: *)."""
    rows = []
    for name, r in seeds[0]["independents"].items():
        cells = [f"{_num(c['statistic'])}{' *' if c['passed'] else ''}" for c in r["methods"].values()]
        rows.append([name, r["kind"], r["data"].rpartition("@")[2], _pct(r["accuracy"]), *cells])
    methods = list(next(iter(seeds[0]["independents"].values()))["methods"])
    return table(["independent model", "kind", "half", "accuracy", *methods], rows)


def cost_table(seeds: list[dict]) -> str:
    """Per method: key creation seconds, shadow models and their training seconds, verification queries."""
    r0 = seeds[0]
    rows = []
    for method, (key, _) in METHODS.items():
        info = r0["keys"][key]
        shadows = key != "IPGuard"
        rows.append([method, f"{info['seconds']:.1f} s" if "seconds" in info else info["error"],
                     r0["cost"]["pool_models"] if shadows else 0,
                     f"{r0['cost']['pool_seconds']:.0f} s" if shadows else "-", info.get("queries", "-")])
    return table(["method", "key creation", "shadow / calibration models", "their training", "verification queries"],
                 rows)


GOALS = ((0.99, "distillation and extraction", ("distill", "extract labels,", "extract probabilities")),
         (0.9, "extraction + adversarial training", ("extract labels + adversarial",)))
"""The issue's SAC goals: least AUC, the thefts it names, and the catalogue names that start with them."""


def _auc_goal(summary: dict, stolen: list[str], want: float, what: str, prefixes: tuple[str, ...]) -> str:
    """Whether SAC-m reaches AUC ``want`` on every theft named by ``prefixes``."""
    cells = {a: summary[a]["methods"]["SAC-m"] for a in stolen if a.startswith(prefixes)}
    if not cells or None in cells.values():
        return f"- SAC-m AUC >= {want:g} against {what}: not measured (no theft kept its accuracy, or no key)."
    low = [f"{a} ({c['auc']:.2f})" for a, c in cells.items() if c["auc"] < want]
    return f"- SAC-m AUC >= {want:g} against {what}: " + (f"REFUTED by {', '.join(low)}." if low else "met.")


def goals(summary: dict, best: dict[str, list[str]]) -> str:
    """The issue's measurable goals, each met or refuted by this run's numbers."""
    stolen = [a for a, r in summary.items() if r["theft"] and a != VICTIM]
    cheap = [a for a in stolen if any(summary[a]["methods"][m]["queries"] <= 100 for m in best[a])]
    missed = [a for a in stolen if a not in cheap]
    first = (f"- Every theft MATCHed by some method at <= 100 queries with zero false claims: "
             f"{'met' if not missed else 'REFUTED for ' + '; '.join(missed)} ({len(cheap)} of {len(stolen)} thefts).")
    return "\n".join([first, *(_auc_goal(summary, stolen, *goal) for goal in GOALS)])


def render(result: dict) -> str:
    """ownership.md: what was reduced, the survival table, the goals, each method's table, independents, cost."""
    seeds, summary, best = result["seeds"], result["summary"], result["survivors"]
    apart = [f"{a} ({_pct(r['accuracy'])})" for a, r in summary.items() if not r["theft"]]
    return document(
        "# Ownership against a thief: SAC, MetaFinger and IPGuard on distilled, extracted and retrained copies",
        f"Written by `{result['command']}` on {result['date']} in {result['wall_seconds'] / 60:.1f} minutes, "
        f"training {sum(r['cost']['trained'] for r in seeds)} shadow models and "
        f"{sum(r['cost']['derived_trained'] for r in seeds)} copies or distilled models "
        "(the rest came from the caches; each model's own training time is recorded, see Cost); "
        f"{len(seeds)} victim seed(s); torch {torch.__version__}. Data: {result['data']}. Victim: LeNet-5 on the "
        f"owner half, test accuracy {_pct(statistics.mean(r['victim_accuracy'] for r in seeds))} (second half of "
        "the test split).",
        "**Reduced against the issue:** " + "; ".join(NOT_MEASURED) + ". Short training (parameters below) so the "
        "run fits a shared 2-core machine; see the module docstring of `nnmark.bench.ownership`.",
        f"Parameters: `{json.dumps(result['params'])}`.",
        section("Which method survives which theft",
                "A theft is a copy that keeps at least the victim's accuracy minus 5 points. MATCH: the method's own "
                "decision rule matches every copy; '(k false)': the same rule also claims k independent models. "
                "The cheapest surviving method matches with zero false claims at the fewest verification queries.",
                survival_table(summary, best),
                "Listed apart (lost more than 5 points, not a theft): " + (", ".join(apart) or "none") + ".",
                false_claims(seeds)),
        section("The issue's goals, checked", goals(summary, best)),
        *(section(f"{m}", method_table(summary, m), level=3) for m in METHODS),
        section("Independent models (seed 0)", f"{len(seeds[0]['independents'])} models; each cell is the method's "
                "statistic (SAC: correlation distance, lower is closer; MetaFinger, IPGuard: query accuracy); * marks "
                "a (false) match.", independent_table(seeds)),
        section("Cost", cost_table(seeds),
                f"Beside the methods (seed 0, recorded training seconds): the {len(seeds[0]['thefts']) - 1} thieves' "
                f"copies and the distilled independent models {seeds[0]['cost']['derived_seconds']:.0f} s, the "
                f"from-scratch independent models {seeds[0]['cost']['independent_seconds']:.0f} s."),
        f"![statistics of copies and independent models]({STEM}.png)",
    )


def figure(result: dict) -> bytes:
    """ownership.png: per method, the statistic of each independent model (grey) and each copy (seed 0)."""
    r0 = result["seeds"][0]
    panels = []
    for m in METHODS:
        if m not in r0["thefts"][VICTIM]["methods"]:
            continue
        panels.append({"title": m, "negatives": [x["methods"][m]["statistic"] for x in r0["independents"].values()],
                       "positives": {a: x["methods"][m]["statistic"] for a, x in r0["thefts"].items()}})
    return plots.ownership_scores(panels)


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False) -> Path:
    """Run the benchmark and write ``ownership.md``, ``.json`` and ``.png`` to ``out_dir``."""
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    start = time.perf_counter()
    spec, note = dataset_spec(p, shadow.default_cache_dir().parent / "bench-ownership")
    rows = [run_seed(s, p, spec, progress) for s in tqdm(range(p["seeds"]), desc="seeds", disable=not progress)]
    summary = summarise(rows)
    result = {**header("ownership", p, quick=quick, seeds=seeds), "data": note, "seeds": rows, "summary": summary,
              "survivors": survivors(summary, rows), "wall_seconds": time.perf_counter() - start}
    return write(out_dir, STEM, result, render(result), figure(result))
