"""``nnmark bench ownership-pools``: the pool study behind MetaFinger's thief-aware pools, on Fashion-MNIST.

The study chose the default thief-aware pools (``shadow.PoolLayout.thief_aware``): its row ``THIEF``. Its row
``ADVERSARIAL`` asks whether a positive that knows adversarial training (a copy of the victim PGD-trained at
``shadow.VARIANT_PGD_EPS``) catches the thief's extracted copy PGD-trained at eps 0.05: it does not, and it loses
copies the default matches (the numbers: ``shadow.THIEF_POSITIVES``).

The setting of ``nnmark bench ownership`` (its parameters, ``FULL`` / ``QUICK``, and its cached models): a LeNet-5
victim on ``fashion-mnist@owner``; the thief's copies (``nnmark.bench.thefts``) on the other half; its independent
models (three architectures, both halves, and distillations of independent teachers) as the false-claim side. One
MetaFinger key per pool design (``DESIGNS``), each the bench's paper pools (``shadow.PoolLayout`` of its ``pool``
parameters) plus variants (``shadow.VARIANTS``) that the owner makes on its own half: attacked copies of the victim
as positives, distillations of independent models as negatives. Per design: the shadow models and their recorded
training seconds, the meta-training seconds, the queries that pass the screen, the null p0, and per copy its query
accuracy and p-value; then the issue's goal (at least 95% query accuracy under RTAL, prune 70% + fine-tune and noise
alpha = 1 + fine-tune, p < 1e-6 against every independent model) checked per design. "Against every independent
model" is read two ways, both required: the key's own binomial p-value (under its null p0) is below 1e-6, and so is
the binomial tail of the copy's hits under the query accuracy of the most agreeing independent model (the
empirical null), and the rule claims no independent model.

The suspects are ``bench ownership``'s, used as they are: its students (the distillation and extraction thefts,
and the distillations of independent teachers) start from seeds of their own (``thefts.THEFT_SEEDS``), apart from
the victims', the pools' and the independents', so no student shares the initial weights of a model it is
compared with.

The caches are those of ``bench ownership``: shadow models under ``shadow.default_cache_dir()``, thefts and
distilled independents under its ``bench-ownership`` sibling; a run after ``bench ownership`` trains only the
variants. As many victim seeds as ``bench ownership`` (3 in ``FULL``; ``--seeds`` sets it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark.bench import ownership, thefts
from nnmark.bench.common import document, header, parameters, section, table, write
from nnmark.data.roles import attacker_data
from nnmark.errors import NnmarkError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import metafinger, shadow
from nnmark.marks.ownership.shadow import ShadowSpec
from nnmark.marks.ownership.stats import binomial_tail

STEM = "metafinger-pools"
FINETUNE = ("rtal", "prune", "noise")
STUDENTS = ("distill", "extract")
THIEF = "+ students, train only (thief-aware)"
ADVERSARIAL = "+ adversarial, train only"
HARD_PRUNE = "+ prune 90%, train only"
OTHER_STUDENTS = {"vgg11": "+ VGG-11 students, train only", "resnet20": "+ ResNet-20 students, train only"}
"""Designs with students of another architecture than the victim's, one per zoo architecture: the thief's VGG-11 and
one no thief of the bench uses."""
EVERY_STUDENT = "+ students of every architecture, train only"
EVERY_STUDENT_HARD_PRUNE = "+ students of every architecture and prune 90%, train only"
"""The wide thief-aware pools (``shadow.PoolLayout.thief_wide``, ``--pool thief-wide``)."""


DESIGNS = {
    "paper": {},
    "fine-tune variants, train only": {"positive_variants": FINETUNE, "variant_copies": 1},
    "fine-tune variants": {"positive_variants": FINETUNE},
    "+ distilled negatives": {"positive_variants": FINETUNE, "negative_variants": ("distill",)},
    THIEF: {"positive_variants": FINETUNE + STUDENTS, "variant_copies": 1},
    "+ students": {"positive_variants": FINETUNE + STUDENTS},
    ADVERSARIAL: {"positive_variants": FINETUNE + STUDENTS + ("adversarial",), "variant_copies": 1},
    HARD_PRUNE: {"positive_variants": FINETUNE + STUDENTS + ("prune90",), "variant_copies": 1},
    **{name: {"positive_variants": FINETUNE + STUDENTS + shadow.students(arch), "variant_copies": 1}
       for arch, name in OTHER_STUDENTS.items()},
    EVERY_STUDENT: {"positive_variants": FINETUNE + STUDENTS + shadow.students(*OTHER_STUDENTS), "variant_copies": 1},
    EVERY_STUDENT_HARD_PRUNE: {"positive_variants": FINETUNE + STUDENTS + shadow.students(*OTHER_STUDENTS)
                               + ("prune90",), "variant_copies": 1},
}
"""Pool designs: ``shadow.PoolLayout`` fields added to the bench's paper pools (``variant_copies`` 2 by default: one
copy trains, the other validates, so the screen demands it; 1: the variants only train). ``THIEF`` is the default
``PoolLayout.thief_aware()`` and ``EVERY_STUDENT_HARD_PRUNE`` is ``PoolLayout.thief_wide`` of the LeNet-5 victim (the
tests hold them equal); "fine-tune variants" was the default before them.
``ADVERSARIAL`` is ``THIEF`` plus the "adversarial" variant, ``HARD_PRUNE`` plus "prune90", the
``OTHER_STUDENTS`` designs plus a distilled and an extracted student of another architecture, ``EVERY_STUDENT`` plus
both architectures' students (``EVERY_STUDENT_HARD_PRUNE``: and "prune90"), one train-only copy each."""
QUICK_DESIGNS = ("paper", THIEF)
VICTIM_ARCH = "lenet5"
"""The study's victim: ``bench ownership``'s LeNet-5."""
GOAL_THEFTS = ("RTAL", "prune 70% + fine-tune", "noise alpha=1 + fine-tune")
GOAL_ACCURACY = 0.95
GOAL_P = 1e-6


def layout(p: dict, design: dict) -> shadow.PoolLayout:
    """The bench's paper pool layout with ``design``'s variants."""
    return shadow.PoolLayout(**p["pool"], epochs=p["epochs"][VICTIM_ARCH],
                             finetune_epochs=p["finetune_epochs"], **design)


def _suspects(victim, p: dict, spec: str, seed: int, build: dict, progress: bool) -> tuple[dict, dict]:
    """(the thief's copies, the independent models) of ``bench ownership``, by name, each {"model", ...}."""
    derived = ownership.derived_cache()
    scratch = ownership.independent_specs(spec, p, seed)
    pool = shadow.build_pool(list(scratch.values()), **build)
    independents = {name: {"model": model, "arch": s.arch, "data": s.data}
                    for (name, s), model in zip(scratch.items(), pool.models)}
    independents.update(ownership.distilled(independents, p, seed, derived))
    copies = thefts.steal(victim, VICTIM_ARCH, data.load(f"{spec}@thief"), p, seed, derived, progress)
    return copies, independents


def _recorded_seconds(pool: shadow.ShadowPool, specs: list[ShadowSpec]) -> float:
    index = dict(zip(pool.specs, pool.paths))
    return sum(json.loads(index[s].with_suffix(".json").read_text())["seconds"] for s in dict.fromkeys(specs))


def design_row(key: KeyFile | None, copies: dict, independents: dict, owner: data.Dataset) -> dict:
    """A key's numbers: queries, p0, each independent model's query accuracy and those the rule claims, and per copy
    its verdict (``ownership.judge``) with the p-value of its hits under the most agreeing independent model."""
    if key is None:
        return {"kept": 0}
    judge = {name: ownership.judge(s["model"], "MetaFinger", key, "labels", owner)
             for name, s in {**copies, **independents}.items()}
    scores = {name: judge[name]["statistic"] for name in independents}
    worst = max(scores.values())
    claimed = [name for name in independents if judge[name]["passed"]]
    out = {"kept": len(key.expected), "screened": key.config["screened"], "p0": key.config["p0"],
           "independents": scores, "independent_max": worst, "false_claims": len(claimed), "claimed": claimed}
    out["copies"] = {name: {**judge[name], "p_empirical": binomial_tail(round(judge[name]["statistic"] * out["kept"]),
                                                                        out["kept"], worst)} for name in copies}
    return out


def goal_met(row: dict) -> bool:
    """The issue's goal on one design's row: every goal theft at >= 95% with both p-values below 1e-6, and no
    false claim."""
    if not row["kept"] or row["false_claims"]:
        return False
    cells = [row["copies"][t] for t in GOAL_THEFTS]
    return all(c["statistic"] >= GOAL_ACCURACY and c["p_value"] < GOAL_P and c["p_empirical"] < GOAL_P
               for c in cells)


def run_seed(seed: int, p: dict, spec: str, names: tuple[str, ...], progress: bool) -> dict:
    """One victim seed: the victim, the suspects, every design's pools and key, and their numbers."""
    owner = data.load(f"{spec}@owner")
    build = {"cache_dir": shadow.default_cache_dir(), "workers": p["workers"],
             "executor": "process" if p["workers"] > 1 else "serial", "progress": progress}
    victim_spec = ShadowSpec(VICTIM_ARCH, owner.name, 100 * seed,
                             epochs=p["epochs"][VICTIM_ARCH])
    victim = shadow.build_pool([victim_spec], **build)[0]
    copies, independents = _suspects(victim, p, spec, seed, build, progress)
    specs = {name: shadow.pool_specs(VICTIM_ARCH, owner.name, models.digest(victim),
                                     layout(p, DESIGNS[name]), seed=100 * seed) for name in names}
    flat = {name: [s for g in groups.values() for s in g] for name, groups in specs.items()}
    pool = shadow.build_pool([s for f in flat.values() for s in f], base=victim, **build)
    rows = {}
    for name in tqdm(names, desc="pool designs", disable=not progress, leave=False):
        start = time.perf_counter()
        try:
            key = metafinger.create(victim, metafinger.Pools(**pool.groups(specs[name])), owner.train.x,
                                    metafinger.Settings(n=p["n"], candidates=p["candidates"], epochs=p["meta_epochs"]),
                                    seed=seed)
        except NnmarkError as e:
            key, error = None, str(e)
        else:
            error = None
        rows[name] = {"shadow_models": len(dict.fromkeys(flat[name])), "meta_seconds": time.perf_counter() - start,
                      "shadow_seconds": _recorded_seconds(pool, flat[name]), "error": error,
                      **design_row(key, copies, independents, owner)}
        rows[name]["goal"] = goal_met(rows[name])
    accuracy = {name: models.accuracy(c["model"], attacker_data(owner)) for name, c in copies.items()}
    return {"seed": seed, "designs": rows, "thief_accuracy": accuracy, "independents": len(independents),
            "trained": len(pool.trained), "build_seconds": pool.seconds}


# --- report -------------------------------------------------------------------------------------------------


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def design_table(r: dict) -> str:
    """Per design: cost, screen, null, the goal thefts' query accuracy, matches and false claims, the goal."""
    rows = []
    for name, d in r["designs"].items():
        if not d["kept"]:
            rows.append([name, d["shadow_models"], f"{d['shadow_seconds']:.0f} s", "-", "no key", *["-"] * 7])
            continue
        goal = [_pct(d["copies"][t]["statistic"]) for t in GOAL_THEFTS]
        matched = sum(c["passed"] for c in d["copies"].values())
        rows.append([name, d["shadow_models"], f"{d['shadow_seconds']:.0f} s", f"{d['meta_seconds']:.1f} s",
                     f"{d['kept']} of {d['screened']}", f"{d['p0']:.3f}", *goal,
                     f"{matched}/{len(d['copies'])}", f"{d['false_claims']} ({_pct(d['independent_max'])})",
                     "met" if d["goal"] else "not met"])
    return table(["pool design", "shadow models", "their training", "meta-training", "queries kept of screened",
                  "p0", *GOAL_THEFTS, "copies matched", "false claims (most agreeing independent)", "goal"], rows)


def copy_table(r: dict) -> str:
    """Per theft: its accuracy, then each design's query accuracy and the p-value under the most agreeing
    independent model (match: *)."""
    names = [n for n, d in r["designs"].items() if d["kept"]]
    rows = []
    for theft, acc in r["thief_accuracy"].items():
        cells = [f"{_pct(c['statistic'])} ({c['p_empirical']:.1g}){' *' if c['passed'] else ''}"
                 for c in (r["designs"][n]["copies"][theft] for n in names)]
        rows.append([theft, _pct(acc), *cells])
    return table(["copy", "thief accuracy", *names], rows)


def _seed_sections(r: dict) -> list[str]:
    """The two tables of one victim seed."""
    met = [n for n, d in r["designs"].items() if d["goal"]]
    return [
        section(f"Pool designs (victim seed {r['seed']})", "Each design is the paper's pools plus the variants named "
                "in `nnmark.bench.metafinger_pools.DESIGNS`, made by the owner on its own half (positives: attacked "
                "copies of the victim; negatives: distillations of independent models). Shadow models: the pool "
                "(source excluded); their training: each model's recorded build seconds. Query accuracy of the goal's "
                "copies; copies matched: by the key's rule, thefts and not; false claims: independent models the "
                f"rule claims (and the highest query accuracy among them). Goal: >= {GOAL_ACCURACY:.0%} on the three "
                f"copies, p < {GOAL_P:g} under the key's p0 and under the most agreeing independent, no false claim.",
                design_table(r),
                f"`{THIEF}` is the default thief-aware pools (`nnmark mark metafinger --pool thief`), "
                f"`{EVERY_STUDENT_HARD_PRUNE}` the wide ones (`--pool thief-wide`).",
                "Goal met by: " + (", ".join(met) if met else "no design (the goal is refuted in this setting)") + ".",
                "False claims: " + ("; ".join(f"{n}: {', '.join(d['claimed'])}" for n, d in r["designs"].items()
                                              if d.get("claimed")) or "none") + "."),
        section(f"Every copy (victim seed {r['seed']})", "Query accuracy under each design's key, the binomial "
                "p-value of its hits under the most agreeing independent model's query accuracy in brackets; * marks "
                "a match by the key's rule.", copy_table(r)),
    ]


def render(result: dict) -> str:
    """metafinger-pools.md: the run, then per victim seed the design table and the copy table."""
    r = result["seeds"][0]
    return document(
        "# MetaFinger pool study: thief-aware pools on Fashion-MNIST, LeNet-5 victim",
        f"Written by `{result['command']}` on {result['date']} in {result['wall_seconds'] / 60:.1f} minutes "
        f"({sum(x['trained'] for x in result['seeds'])} shadow models trained, the rest from the caches); "
        f"{len(result['seeds'])} victim seed(s); torch "
        f"{torch.__version__}. Data: {result['data']}. Suspects: the {len(r['thief_accuracy'])} copies of `nnmark "
        f"bench ownership` (thefts and not) and its {r['independents']} independent models. Parameters: "
        f"`{json.dumps(result['params'])}`. See the module docstring of `nnmark.bench.metafinger_pools`.",
        *(block for x in result["seeds"] for block in _seed_sections(x)),
    )


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False) -> Path:
    """Run the study and write ``metafinger-pools.md`` and ``.json`` to ``out_dir`` (per victim seed)."""
    p = parameters(ownership.FULL, ownership.QUICK, quick=quick, seeds=seeds)
    start = time.perf_counter()
    spec, note = ownership.dataset_spec(p, ownership.derived_cache())
    names = QUICK_DESIGNS if quick else tuple(DESIGNS)
    rows = [run_seed(s, p, spec, names, progress) for s in range(p["seeds"])]
    result = {**header("ownership-pools", p, quick=quick, seeds=seeds), "data": note, "seeds": rows,
              "wall_seconds": time.perf_counter() - start}
    return write(out_dir, STEM, result, render(result))
