"""``nnmark bench trace``: which licensee leaked it (``marks.ownership.licensing``), two schemes side by side.

Per seed, one LeNet-5 source trained on the ``@owner`` half of Fashion-MNIST (the ownership benchmark's victim,
from the same shadow cache) is licensed to N licensees with each scheme (``code``: a codeword over m coupled
trigger families; ``onehot``: one family per licensee). Then, for each scheme:

- every copy, untouched, is traced (the goal: its licensee, and only it);
- one leaked copy (a different one per seed) is attacked by the thief with the ``@thief`` half (FTAL and RTAL
  fine-tuning, prune 70% + fine-tune, distillation, extraction with labels; ``bench.thefts.derive``, cached) and
  traced when the attack keeps it within 5 accuracy points (``attacks.measure.is_theft``);
- ``trials`` random sets of 2 and of 3 colluders average their weights, or answer each query from one of their
  copies at random, and are traced (goal: at least one colluder named, never anyone else);
- independent models trained from scratch on either half (``bench.ownership.independent_specs``, the same ones
  for every seed) and the unmarked source are traced: any licensee named is a false accusation.

It reports the queries a trace asks, the seconds per copy (the copy's fine-tune plus its share of the primer),
the copies' accuracy against the source's, and a projection on paper for 1,000 licensees
(``licensing.projection``: code length, queries and per-licensee level at the measured read rates).
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark.attacks.measure import is_theft
from nnmark.bench import thefts
from nnmark.bench.common import document, header, parameters, section, table, write
from nnmark.bench.ownership import DATA, FALLBACK, independent_specs
from nnmark.data.roles import attacker_data
from nnmark.errors import DataError
from nnmark.marks.ownership import licensing, shadow
from nnmark.oracles import LabelsOracle, Oracle, TorchOracle

STEM = "trace"
VICTIM_ARCH = "lenet5"
"""The source every licensee's copy is made from: a LeNet-5, as ``bench ownership``'s first victim."""
FULL = {"seeds": 3, "data": DATA, "licensees": 16, "epochs": 4, "finetune_epochs": 2, "theft_epochs": 4,
        "independents": {"lenet5": (10, 10)}, "trials": 10, "families": licensing.FAMILIES,
        "train_per_family": licensing.TRAIN_PER_FAMILY, "copy_epochs": licensing.EPOCHS, "clean": licensing.CLEAN}
QUICK = {"seeds": 1, "data": "mnist5k", "licensees": 4, "epochs": 2, "finetune_epochs": 1, "theft_epochs": 1,
         "independents": {"lenet5": (1, 1)}, "trials": 2, "families": 24, "train_per_family": 20, "copy_epochs": 2,
         "clean": 2000}
THEFTS = {
    "fine-tune (FTAL)": thefts.Theft("finetune-mode", {"mode": "FTAL"}, training="finetune"),
    "RTAL": thefts.Theft("finetune-mode", {"mode": "RTAL"}, training="finetune"),
    "prune 70% + fine-tune": thefts.Theft("prune-finetune", {"fraction": 0.7}, training="finetune"),
    "distill, same arch, T=3": thefts.catalogue()["distill, same arch, T=3"],
    "extract labels, same arch": thefts.catalogue()["extract labels, same arch"],
}
"""The ownership attacks a leaked copy goes through (the ownership benchmark's recipes)."""
COLLUSIONS = ("average weights", "mix answers per query")
SCHEMES = licensing.SCHEMES
PROJECTED = 1000
QUERY_BUDGET = 192
"""The onehot scheme asks QUERY_BUDGET // N triggers of each licensee's family (12 for 16 licensees): about the
code scheme's 40 x 4 queries, and enough for p0^k to reach epsilon_1 / N."""


class MixedOracle(Oracle):
    """Colluders behind one API: each query answered by one of their copies, drawn at random (labels only)."""

    def __init__(self, copies: list[nn.Module], shape: tuple[int, int, int], classes: int, seed: int):
        super().__init__(shape, classes)
        self.copies, self.gen = copies, torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        answers = torch.stack([m(x).argmax(1) for m in self.copies])
        return answers[torch.randint(len(self.copies), (len(x),), generator=self.gen), torch.arange(len(x))]


def averaged(copies: list[nn.Module]) -> nn.Module:
    """One model whose every tensor is the mean of the copies' (same architecture)."""
    out = copy.deepcopy(copies[0])
    states = [c.state_dict() for c in copies]
    out.load_state_dict({k: sum(s[k].float() for s in states).div(len(states)).to(states[0][k].dtype)
                         for k in states[0]})
    return out.eval()


def outcome(verdict, guilty: set[str]) -> dict:
    """A trace's outcome: who was named, whether a guilty one was, whether an innocent one was."""
    named = [a["licensee"] for a in verdict.details["accused"]]
    return {"named": named, "caught": bool(set(named) & guilty), "false": bool(set(named) - guilty),
            "decision": verdict.decision, "p_value": verdict.details["p_value"], "queries": verdict.queries}


def _trace(oracle: Oracle, key, guilty: set[str]) -> dict:
    return outcome(licensing.trace(oracle, key), guilty)


def _labels(model: nn.Module, ds: data.Dataset) -> LabelsOracle:
    return LabelsOracle(TorchOracle(model.eval(), ds.shape, ds.num_classes))


def leaked_thefts(leaked: nn.Module, thief: data.Dataset, p: dict, seed: int, cache: Path) -> dict[str, dict]:
    """Each ``THEFTS`` attack on the ``leaked`` copy with the thief's half: name -> {model, seconds, cached}."""
    out = {}
    for name, theft in THEFTS.items():
        recipe = {"attack": theft.attack, "options": theft.options, "seed": thefts.theft_seed(seed),
                  "epochs": p["theft_epochs" if theft.training == "train" else "finetune_epochs"]}
        out[name] = dict(zip(("model", "record"), thefts.derive(recipe, leaked, VICTIM_ARCH, thief, cache)))
    return out


def run_scheme(scheme: str, victim: nn.Module, owner: data.Dataset, thief: data.Dataset, independents: dict,
               p: dict, seed: int, cache: Path) -> dict:
    """License ``victim`` with ``scheme``, then trace every copy, the attacked leak, colluders and the innocent."""
    names = [f"licensee-{i + 1:02d}" for i in range(p["licensees"])]
    start = time.perf_counter()
    copies, key = licensing.license_copies(
        victim, owner, names, secret=f"bench-trace-{seed}".encode(), scheme=scheme, families=p["families"],
        per_family=licensing.PER_FAMILY if scheme == "code" else QUERY_BUDGET // len(names),
        train_per_family=p["train_per_family"], epochs=p["copy_epochs"], clean=p["clean"], seed=seed)
    seconds = time.perf_counter() - start
    test = attacker_data(owner)
    source_acc = models.accuracy(victim, test)
    rows = key.config["licensees"]
    untouched = [_trace(_labels(c, owner), key, {n}) | {"licensee": n} for n, c in zip(names, copies)]
    leak = seed % len(names)
    attacked = {}
    for name, theft in leaked_thefts(copies[leak], thief, p, seed, cache).items():
        acc = models.accuracy(theft["model"], test)
        attacked[name] = {**_trace(_labels(theft["model"], owner), key, {names[leak]}), "accuracy": acc,
                          "theft": is_theft(source_acc, acc), "seconds": theft["record"]["seconds"]}
    gen = torch.Generator().manual_seed(seed)
    collusion = {}
    for size in (2, 3):
        for how in COLLUSIONS:
            trials = []
            for t in range(p["trials"]):
                who = torch.randperm(len(names), generator=gen)[:size].tolist()
                group = [copies[i] for i in who]
                oracle = (_labels(averaged(group), owner) if how == COLLUSIONS[0]
                          else MixedOracle(group, owner.shape, owner.num_classes, seed * 100 + t))
                trials.append(_trace(oracle, key, {names[i] for i in who}))
            collusion[f"{size} colluders, {how}"] = trials
    innocent = {name: _trace(_labels(m, owner), key, set()) for name, m in independents.items()}
    innocent["the unmarked source"] = _trace(_labels(victim, owner), key, set())
    read = [r["p_value"] for r in untouched]
    return {"scheme": scheme, "seconds": seconds, "seconds_per_copy": seconds / len(names),
            "queries": len(key.expected),
            "families": len(key.extras["families"]), "alphabet": key.extras["alphabet"].sum(1).double().mean().item(),
            "source_accuracy": key.config["source_accuracy"], "copies": rows, "untouched": untouched,
            "attacked": attacked, "collusion": collusion, "innocent": innocent, "max_p_untouched": max(read),
            "read_rate": _read_rate(copies, key, owner)}


def _read_rate(copies: list[nn.Module], key, ds: data.Dataset) -> float:
    """The median share of a copy's answers on the registry's triggers that are its own codeword's symbols."""
    family, codes = key.extras["family"], key.extras["codes"]
    rates = []
    for model, code in zip(copies, codes):
        answers = _labels(model, ds).labels(key.queries)
        carried = code[family] >= 0
        rates.append((answers[carried] == code[family][carried]).double().mean().item())
    return statistics.median(rates)


def load_models(p: dict, seed: int, progress: bool) -> tuple[nn.Module, data.Dataset, data.Dataset, dict, str]:
    """(victim, owner half, thief half, independent models by name, the data's spec)."""
    spec = p["data"]
    try:
        data.load(spec)
    except DataError:
        spec = FALLBACK
    owner, thief = data.load(f"{spec}@owner"), data.load(f"{spec}@thief")
    build = {"cache_dir": shadow.default_cache_dir(), "workers": 1, "executor": "serial", "progress": progress}
    victim = shadow.build_pool([shadow.ShadowSpec(VICTIM_ARCH, owner.name, 100 * seed, epochs=p["epochs"])],
                               **build)[0]
    scratch = independent_specs(spec, {**p, "epochs": {VICTIM_ARCH: p["epochs"]}}, 0)
    pool = shadow.build_pool(list(scratch.values()), **build)
    return victim.eval(), owner, thief, dict(zip(scratch, pool.select(list(scratch.values())))), spec


def run(*, quick: bool = False, seeds: int | None = None, out_dir: str | Path = "docs/benchmarks",
        progress: bool = False) -> Path:
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    cache = shadow.default_cache_dir().parent / "bench-trace"
    start = time.perf_counter()
    runs = []
    for seed in tqdm(range(p["seeds"]), desc="trace seeds", disable=not progress):
        victim, owner, thief, independents, spec = load_models(p, seed, progress)
        schemes = {s: run_scheme(s, victim, owner, thief, independents, p, seed, cache) for s in SCHEMES}
        runs.append({"seed": seed, "data": spec, "schemes": schemes})
    result = {**header(STEM, p, quick=quick, seeds=seeds), "runs": runs, "projection": projections(runs, p),
              "seconds": time.perf_counter() - start}
    return write(out_dir, STEM, result, render(result))


# --- summaries ------------------------------------------------------------------------------------------------


def _rate(trials: list[dict], field: str) -> str:
    return f"{sum(t[field] for t in trials)}/{len(trials)}"


def projections(runs: list[dict], p: dict) -> dict:
    """For each measured read rate (a single copy; 2 colluders), the code length, queries and per-licensee level
    that 16 and 1,000 licensees need at epsilon_1 (``licensing.projection``)."""
    code = [r["schemes"]["code"] for r in runs]
    single = min(s["read_rate"] for s in code)
    q = round(statistics.mean(s["alphabet"] for s in code))
    out = {}
    for what, rate in (("a single copy", single), ("2 colluders (half each)", single / 2)):
        out[what] = {"read_rate": rate, "alphabet": q,
                     **{str(n): licensing.projection(n, licensing.EPSILON, q, licensing.PER_FAMILY, rate)
                        for n in (p["licensees"], PROJECTED)}}
    return out


def render(result: dict) -> str:
    p, runs = result["params"], result["runs"]
    data_name = runs[0]["data"] if runs else p["data"]
    head = (f"`{result['command']}` ({result['date']}); {data_name} (`@owner` half trains the LeNet-5 source, the "
            f"thief holds `@thief`); {p['licensees']} licensees; **{p['seeds']} seed(s)**"
            + (f" (a reduced run: full mode asks 3; this run took {result['seconds'] / 60:.0f} minutes on the shared "
               "2-core machine)" if p["seeds"] < 3 else "")
            + f"; {sum(sum(c) for c in p['independents'].values())} independent LeNet-5 models from scratch + the "
            "unmarked source for false accusations; epsilon_1 = "
            f"{licensing.EPSILON:g} (a licensee is named at p <= epsilon_1 / N).")
    blocks = ["# Which licensee leaked it: `nnmark license` / `nnmark trace`", head]
    for scheme in SCHEMES:
        per = [r["schemes"][scheme] for r in runs]
        blocks.append(section(f"Scheme `{scheme}`" + (" (default)" if scheme == licensing.DEFAULT_SCHEME else ""),
                              _scheme_table(per), level=2))
    blocks.append(section("Goals", _goals(runs), level=2))
    blocks.append("A leak is traced when its licensee's p-value reaches epsilon_1 / N; below that, the trace says "
                  "\"no licensee\" (exit 1) rather than guess. The onehot scheme's null rate p0_l is the highest rate "
                  "at which the source or a sibling copy answers l's target on l's triggers, and a copy taught to "
                  "answer t on its own fusions answers t on other families' fusions too: where a sibling shares l's "
                  "target, p0_l reaches 1 and l cannot be named; and that null is assumed, not exact, so an "
                  "independent model can be read as a licensee's (`nnmark license` does not offer the scheme: it is "
                  "this benchmark's baseline). The code scheme teaches every family to every copy, so no sibling "
                  "answers for another, and its p-values are exact: it is the default. Both fine-tune their copies "
                  "with a feature-matching term (`licensing.feature_matched`) that carries the codeword "
                  "through RTAL; why distillation and extraction still lose the licensee, and the carriers tried on "
                  "natural images: `trace-carriers.md`.")
    blocks.append(section("Projection on paper", _projection_table(result["projection"]), level=2))
    return document(*blocks)


def _all(per: list[dict], part: str) -> list[dict]:
    return [t for s in per for t in (s[part].values() if isinstance(s[part], dict) else s[part])]


def _scheme_table(per: list[dict]) -> str:
    rows = [["untouched copies traced to their licensee", _rate([t for s in per for t in s["untouched"]], "caught"),
             "false: " + _rate([t for s in per for t in s["untouched"]], "false")]]
    for name in THEFTS:
        trials = [s["attacked"][name] for s in per]
        stolen = [t for t in trials if t["theft"]]
        acc = ", ".join(f"{t['accuracy']:.1%}" for t in trials)
        rows.append([f"leaked copy, {name} (accuracy {acc})", f"{_rate(stolen, 'caught')} within 5 points",
                     "false: " + _rate(trials, "false")])
    for name in per[0]["collusion"]:
        trials = [t for s in per for t in s["collusion"][name]]
        rows.append([name, _rate(trials, "caught") + " named a colluder", "false: " + _rate(trials, "false")])
    innocent = [t for s in per for t in s["innocent"].values()]
    rows.append(["independent models + unmarked source", "", "false: " + _rate(innocent, "false")])
    source = [s["innocent"]["the unmarked source"]["decision"] for s in per]
    drops = [100 * r["accuracy_drop"] for s in per for r in s["copies"]]
    cost = [
        ["queries per trace", str(per[0]["queries"]), f"{per[0]['families']} families"],
        ["seconds per copy", f"{statistics.mean(s['seconds_per_copy'] for s in per):.1f}", "incl. the primer's share"],
        ["copy accuracy vs source (points)", f"{min(-d for d in drops):+.2f} to {max(-d for d in drops):+.2f}",
         f"largest loss {max(drops):.2f} (negative: a gain)"],
        ["unmarked source read as", ", ".join(sorted(set(source))), ""],
        ["median read rate of a copy", f"{statistics.median(s['read_rate'] for s in per):.0%}", ""],
    ]
    return table(["trial", "traced", "innocent named"], rows + cost)


def _goals(runs: list[dict]) -> str:
    code = [r["schemes"][licensing.DEFAULT_SCHEME] for r in runs]
    single = [t for s in code for t in s["untouched"]] + [t for s in code for t in s["attacked"].values()
                                                          if t["theft"]]
    two = [t for s in code for t in s["collusion"]["2 colluders, average weights"]]
    three = [t for s in code for k, v in s["collusion"].items() if k.startswith("3") for t in v]
    every = (_all(code, "untouched") + _all(code, "attacked") + [t for s in code for v in s["collusion"].values()
                                                                 for t in v] + _all(code, "innocent"))
    rows = [
        ["single leaked copy, untouched or attacked within 5 points: 100% traced", _rate(single, "caught")],
        ["2 colluders averaging weights: >= 90% name a colluder", _rate(two, "caught")],
        ["3 colluders (reported)", _rate(three, "caught")],
        ["false accusations: 0 in every trial", _rate(every, "false")],
        ["queries to a decision <= 200", str(code[0]["queries"])],
    ]
    return table(["goal (default scheme)", "measured"], rows)


def _projection_table(projection: dict) -> str:
    rows = []
    for what, entry in projection.items():
        for n, x in entry.items():
            if isinstance(x, dict):
                rows.append([what, f"{entry['read_rate']:.0%}", n, x["families"], x["queries"], f"{x['level']:.1e}"])
    return ("Fewest families m at which a suspect read at the measured rate is named against the worst null (a "
            "model answering one class per family: S = k Bin(m, 1/q), q = "
            f"{next(iter(projection.values()))['alphabet']} "
            "symbols), at epsilon_1 / N. Ten classes give at most 45 families (base pairs), so 1,000 licensees "
            "fit in one code only where m <= 45.\n\n"
            + table(["suspect", "read rate", "licensees N", "families m", "queries m k", "level epsilon_1 / N"], rows))
