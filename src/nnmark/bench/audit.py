"""``nnmark bench audit``: queries to a decision, sequential against the whole key, and the error rates of stopping early.

For each seed: a LeNet-5 source on ``DATA``, its MetaFinger shadow pools (``nnmark.marks.ownership.shadow``,
serial, cached under its ``default_cache_dir()``) and ``independents`` independently trained LeNet-5s in no
pool; five keys from the source (DBI, pairs, MetaFinger, IPGuard, iNNformant float32 vs float64). Suspects:
the source untouched and in the float64 environment; fine-tuned (SGD, attacker data, 10 steps, at
``finetune_lrs``), pruned (``prune`` fractions) and int8-quantized copies; stolen copies after FTAL and
prune (50%) + fine-tune; the independent models. Each key is asked of each suspect once as a whole key
(``nnmark verify``) and in ``orders`` seeded random orders sequentially (``nnmark.audit``, batches of
``batch_size``, alpha = ``alpha``). Reported per method and suspect: the whole-key decision, the sequential
decisions, and queries to a decision (median and max over seeds and orders) against the whole key's; per
ownership method, the false-claim rate (MATCH on an independent model) against alpha; per method, the
missed-detection rate (the sequential decision differs from the whole key's). The thief's copies on Fashion-MNIST
(distilled, extracted, retrained; every ownership key, watermarks included) are audited the same way in
``nnmark bench ownership``, beside the independent models they are judged against.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from nnmark import data, envs, models
from nnmark.attacks import finetune, finetune_mode, prune, prune_finetune, quantize_int8
from nnmark.audit import run as audit
from nnmark.bench.common import header, parameters, write
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.marks.integrity import dbi, pairing
from nnmark.marks.ownership import ipguard, metafinger, shadow
from nnmark.marks.ownership.shadow import ShadowSpec
from nnmark.marks.telltale import innformant
from nnmark.oracles import Oracle, TorchOracle

STEM = "audit"
DATA = "digits"
SECRET, USER = b"nnmark-bench-secret", "bench"
FULL = {"seeds": 3, "orders": 10, "independents": 6, "alpha": 1e-3, "batch_size": 8, "n_dbi": 100, "dbi_itr": 1000,
        "n_pairs": 50, "n_fingerprint": 100, "n_telltale": 50, "epochs": 8, "finetune_lrs": (1e-4, 1e-3),
        "prune": (0.01, 0.1), "negatives": 4, "af": 2}
QUICK = {"seeds": 1, "orders": 3, "independents": 5, "alpha": 1e-3, "batch_size": 8, "n_dbi": 20, "dbi_itr": 200,
         "n_pairs": 6, "n_fingerprint": 30, "n_telltale": 12, "epochs": 3, "finetune_lrs": (1e-3,),
         "prune": (0.1,), "negatives": 2, "af": 1}
INDEPENDENT = "independent"


def _source_and_pools(p: dict, seed: int):
    """The source, MetaFinger's four pools and the independent models (trained or read from the shadow cache)."""
    cache = shadow.default_cache_dir()
    source = shadow.build_pool([ShadowSpec("lenet5", DATA, seed, epochs=p["epochs"])], cache_dir=cache,
                               executor="serial")[0]
    layout = shadow.PoolLayout(negatives=p["negatives"], val_negatives=2, af=p["af"], epochs=p["epochs"])
    specs = shadow.pool_specs("lenet5", DATA, models.digest(source), layout, seed=seed)
    others = [ShadowSpec("lenet5", DATA, 1000 + 100 * seed + i, epochs=p["epochs"]) for i in range(p["independents"])]
    pool = shadow.build_pool([*(s for g in specs.values() for s in g), *others], cache_dir=cache, base=source,
                             executor="serial")
    return source, metafinger.Pools(**pool.groups(specs)), pool.select(others)


def _keys(source, pools, ds: data.Dataset, p: dict, seed: int) -> list[audit.AuditKey]:
    """The five keys of one source."""
    oracle = TorchOracle(source, ds.shape)
    x = natural_pool(ds).x
    env_oracles = {name: envs.get(name).oracle(source, ds.shape) for name in ("float32", "float64")}
    made = [
        dbi.create(oracle, x[: p["n_dbi"]], itr=p["dbi_itr"], eps=1e-4 * dbi.PAPER_ITR / p["dbi_itr"]),
        pairing.create(oracle, p["n_pairs"], secret=SECRET, user_id=USER, max_itr=100, alpha=1e-4, seed=seed),
        metafinger.create(source, pools, ds.train.x, metafinger.Settings(n=p["n_fingerprint"], epochs=30), seed=seed),
        ipguard.create(oracle, ds.train.x[: 2 * p["n_fingerprint"]], n=p["n_fingerprint"], seed=seed),
        innformant.create(env_oracles["float32"], env_oracles, x[: p["n_telltale"]], remote_max=200),
    ]
    return [audit.AuditKey(key.method, "", key) for key in made]


def _suspects(source, independents, ds: data.Dataset, p: dict, seed: int) -> dict[str, Callable[[], Oracle]]:
    """Suspect name -> a builder of its oracle."""
    att = attacker_data(ds)
    copies = {"untouched": source, "int8": quantize_int8(source),
              "FTAL (stolen)": finetune_mode(source, att.x, att.y, mode="FTAL", seed=seed),
              "prune 50% + FT (stolen)": prune_finetune(source, att.x, att.y, fraction=0.5, seed=seed)}
    copies.update({f"fine-tune lr {lr:g}": finetune(source, att.x, att.y, lr=lr, steps=10, seed=seed)
                   for lr in p["finetune_lrs"]})
    copies.update({f"prune {f:.0%}": prune(source, f) for f in p["prune"]})
    copies.update({f"{INDEPENDENT} {i}": m for i, m in enumerate(independents)})
    builders = {name: (lambda m=m: TorchOracle(m, ds.shape)) for name, m in copies.items()}
    builders["float64 environment"] = lambda: envs.get("float64").oracle(source, ds.shape)
    return builders


def measure(oracle: Callable[[], Oracle], akey: audit.AuditKey, p: dict) -> dict:
    """One key on one suspect: the whole key's decision and queries, then each order's sequential ones."""
    def ask(sequential: bool, order: int = 0) -> audit.KeyResult:
        settings = audit.Settings(secret=SECRET, alpha=p["alpha"], seed=order, sequential=sequential,
                                  batch_size=p["batch_size"])
        suspect = oracle()
        try:
            return audit.audit_key(suspect, akey, settings)
        finally:
            suspect.close()

    full = ask(False)
    runs = [ask(True, order) for order in range(p["orders"])]
    return {"method": akey.key.method, "key_size": full.key_size, "full_decision": full.decision,
            "full_passed": full.passed, "full_queries": full.queries, "decisions": [r.decision for r in runs],
            "passed": [r.passed for r in runs], "queries": [r.queries for r in runs]}


def run_seed(seed: int, p: dict, ds: data.Dataset, progress: bool) -> list[dict]:
    """Every key of one source on every suspect."""
    source, pools, independents = _source_and_pools(p, seed)
    akeys = _keys(source, pools, ds, p, seed)
    rows = []
    for name, oracle in tqdm(_suspects(source, independents, ds, p, seed).items(), desc=f"seed {seed}",
                             disable=not progress):
        rows += [{"seed": seed, "suspect": name, **measure(oracle, akey, p)} for akey in akeys]
    return rows


def _suspect_group(name: str) -> str:
    return INDEPENDENT if name.startswith(INDEPENDENT) else name


def render(result: dict) -> str:
    """The Markdown tables: queries and decisions per method and suspect, then the error rates."""
    p, rows = result["params"], result["rows"]
    lines = [f"# nnmark audit: sequential vs whole-key verification ({DATA}, LeNet-5)", "",
             f"`{result['command']}` ({result['date']}, {result['wall_seconds']:.0f} s); alpha = {p['alpha']}, "
             f"batches of {p['batch_size']}, {p['seeds']} seed(s) x {p['orders']} query orders.", "",
             "Queries: inputs sent to the suspect for the key (iNNformant's include its natural sources, and it is "
             "asked whole: its answers depend on the batch). Median share: the sequential median over the whole "
             "key's queries. A key of n queries cannot stop before one batch, so keys much larger than the batch "
             "show the saving best.", "",
             "| method | suspect | whole-key decision | sequential decisions | queries median / max | whole key | "
             "median share |", "| --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], _suspect_group(row["suspect"])), []).append(row)
    for (method, suspect), group in groups.items():
        queries = [q for r in group for q in r["queries"]]
        full = statistics.median(r["full_queries"] for r in group)
        decisions = sorted({d for r in group for d in r["decisions"]})
        whole = sorted({r["full_decision"] for r in group})
        lines.append(f"| {method} | {suspect} | {', '.join(whole)} | {', '.join(decisions)} | "
                     f"{statistics.median(queries):g} / {max(queries)} | {full:g} | "
                     f"{statistics.median(queries) / full:.0%} |")
    lines += ["", "False claims: MATCH on an independent model, sequentially (every seed and order) and by the whole key "
              "(every seed). Early stopping adds no false claim when the sequential count is the whole key's times the "
              "orders: what remains is the method's own (IPGuard's boundary points transfer to independent models).",
              "", "| method | false claims, sequential | false claims, whole key | alpha | missed detection vs whole key |",
              "| --- | --- | --- | --- | --- |"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        pairs = [(s, r["full_passed"]) for r in mine for s in r["passed"]]
        missed = sum(s != f for s, f in pairs)
        independent = [r for r in mine if _suspect_group(r["suspect"]) == INDEPENDENT]
        claims = [s for r in independent for s in r["passed"]]
        whole = [r["full_passed"] for r in independent]
        owned = audit.purpose_of(method) == audit.OWNERSHIP
        rate = f"{sum(map(bool, claims))}/{len(claims)}" if owned else "n/a"
        whole_rate = f"{sum(map(bool, whole))}/{len(whole)}" if owned else "n/a"
        lines.append(f"| {method} | {rate} | {whole_rate} | {p['alpha']:g} | {missed}/{len(pairs)} |")
    return "\n".join(lines) + "\n"


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False) -> Path:
    """Run the benchmark and write ``audit.md`` and ``audit.json`` to ``out_dir``."""
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    ds = data.load(DATA)
    start = time.perf_counter()
    torch.manual_seed(0)
    rows = [row for s in range(p["seeds"]) for row in run_seed(s, p, ds, progress)]
    result = {**header(STEM, p, quick=quick, seeds=seeds), "rows": rows, "wall_seconds": time.perf_counter() - start}
    return write(out_dir, STEM, result, render(result))
