"""``nnmark bench integrity``: Gao et al.'s comparison layout on mnist5k with LeNet-5.

For each seed: train a LeNet-5, make Validset (natural test images), DBI and Pairs keys (Pairs at
the paper's adjacent crossing, margin 0, and with a head margin), attack the model (backdoor,
fine-tuning at lr 1e-10 ... 1e-3 beside the fraction of weights it really changed, magnitude
pruning, int8 quantization), and record detection rates: per sample, and per pair (a pair detects
when either member flips; for the baselines, pairs are two random samples, as the paper forms them).
Also: false alarms of the untouched model in other environments, and the cost of 1,000 iterations
of each method's core optimisation against 1,000 plain forward+backward passes (Table 5 layout).
AID (the paper's other baseline) is not implemented yet.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nnmark import data, envs, models
from nnmark.attacks import backdoor, finetune, measure, prune, quantize_int8
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.keys import KeyFile
from nnmark.marks.integrity import baselines, dbi, pairing
from nnmark.bench.common import command, mean_std, parameters, today, write
from nnmark.oracles import Oracle, TorchOracle

SECRET, USER = b"nnmark-bench-secret", "bench"
FULL = {"seeds": 3, "n": 150, "epochs": 8, "dbi_itr": 10_000, "pairs_itr": 10_000, "alpha": 1e-6,
        "max_steps": 10_000, "margins": (0.0, 1e-3), "backdoor_steps": 2000, "finetune_steps": 10,
        "prune": (0.001, 0.01, 0.05, 0.1, 0.3), "timing_n": (150, 300), "timing_itr": 1000}
QUICK = {"seeds": 1, "n": 8, "epochs": 3, "dbi_itr": 200, "pairs_itr": 100, "alpha": 1e-5,
         "max_steps": 500, "margins": (0.0, 1e-3), "backdoor_steps": 300, "finetune_steps": 10,
         "prune": (0.01, 0.1), "timing_n": (8, 16), "timing_itr": 10}
FINETUNE_LRS = (1e-10, 1e-8, 1e-6, 1e-5, 1e-4, 1e-3)
FALSE_ALARM_ENVS = ("float64", "mkldnn-off", "batch1")


def _keys(oracle: TorchOracle, ds: data.Dataset, p: dict, seed: int) -> dict[str, KeyFile]:
    """Validset and DBI keys of 2n samples, Pairs keys of n pairs per margin."""
    gen = torch.Generator().manual_seed(seed)
    pool = natural_pool(ds)
    out = {
        "Validset": baselines.natural(oracle, pool.x[torch.randperm(len(pool), generator=gen)[: 2 * p["n"]]]),
        "DBI": dbi.create(oracle, ds.train.x[torch.randperm(len(ds.train), generator=gen)[: 2 * p["n"]]],
                          itr=p["dbi_itr"]),
    }
    for margin in p["margins"]:
        out[f"Pairs margin={margin:g}"] = pairing.create(
            oracle, p["n"], secret=SECRET, user_id=USER, max_itr=p["pairs_itr"], alpha=p["alpha"],
            max_steps=p["max_steps"], margin=margin, seed=seed)
    return out


def detection(suspect: Oracle, key: KeyFile, seed: int) -> dict[str, float]:
    """Per-sample and per-pair detection rates of one key on one suspect."""
    if key.method == pairing.METHOD:
        v = pairing.verify(suspect, key, secret=SECRET)
        return {"single": v.details["sample_change_rate"], "pair": v.statistic}
    changed = suspect.labels(key.queries) != key.expected
    order = torch.randperm(len(changed), generator=torch.Generator().manual_seed(seed))
    pairs = changed[order[: len(order) // 2 * 2]].view(-1, 2).any(dim=1)
    return {"single": changed.double().mean().item(), "pair": pairs.double().mean().item()}


def _attacks(model: torch.nn.Module, ds: data.Dataset, p: dict, seed: int) -> tuple[dict, dict]:
    """Attacked models by name, and what each attack measurably did."""
    atk = attacker_data(ds)
    out, info = {}, {}
    bd, report = backdoor(model, atk.x, atk.y, target=0, max_steps=p["backdoor_steps"], test=natural_pool(ds),
                          lr=1e-3, seed=seed)
    out["backdoor"] = bd
    info["backdoor"] = {"poison_success": report.poison_success, "steps": report.steps,
                        "clean_accuracy": report.clean_accuracy_after}
    for lr in FINETUNE_LRS:
        m = finetune(model, atk.x, atk.y, lr=lr, steps=p["finetune_steps"], seed=seed)
        out[f"finetune lr={lr:g}"] = m
        info[f"finetune lr={lr:g}"] = {"changed_fraction": measure.changed_fraction(model, m)}
    for f in p["prune"]:
        out[f"prune {f:g}"] = prune(model, f, scope="global")
        info[f"prune {f:g}"] = {"sparsity": measure.sparsity(out[f"prune {f:g}"])}
    for g in ("tensor", "channel"):
        out[f"int8 per-{g}"] = quantize_int8(model, granularity=g)
        info[f"int8 per-{g}"] = {"changed_fraction": measure.changed_fraction(model, out[f"int8 per-{g}"])}
    return out, info


def run_seed(seed: int, p: dict, ds: data.Dataset) -> dict:
    torch.manual_seed(seed)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=p["epochs"], seed=seed)
    oracle = TorchOracle(model, ds.shape, ds.num_classes)
    keys = _keys(oracle, ds, p, seed)
    attacked, info = _attacks(model, ds, p, seed)
    rates = {a: {k: detection(TorchOracle(m, ds.shape), key, seed) for k, key in keys.items()}
             for a, m in attacked.items()}
    false_alarms = {e: {k: detection(envs.get(e).oracle(model, ds.shape), key, seed) for k, key in keys.items()}
                    for e in FALSE_ALARM_ENVS}
    return {"seed": seed, "accuracy": models.accuracy(model, ds.test), "attack_info": info, "detection": rates,
            "false_alarms": false_alarms,
            "pairs_made": {k: key.config["n_pairs"] for k, key in keys.items() if key.method == pairing.METHOD}}


def time_core(p: dict, ds: data.Dataset) -> list[dict]:
    """Seconds for timing_itr iterations of each core optimisation, and of plain forward+backward passes."""
    model = models.build("lenet5", ds.shape, ds.num_classes).eval()
    oracle = TorchOracle(model, ds.shape, ds.num_classes)
    head = pairing.derive_head(SECRET, USER, ds.num_classes)
    rows = []
    for n in p["timing_n"]:
        x, k = ds.train.x[:n], p["timing_itr"]
        start = time.perf_counter()
        for _ in range(k):
            oracle.gradient(lambda z: z.sum(dim=1), x, on="logits")
        plain = time.perf_counter() - start
        start = time.perf_counter()
        dbi.fragilize(oracle, x, 1e-4, k)
        t_dbi = time.perf_counter() - start
        start = time.perf_counter()
        pairing.approach_boundary(oracle, head, n, lam=pairing.DEFAULT_LAMBDA, lr=pairing.PAPER_LR, max_itr=k,
                                  tol=0.0, patience=k + 1, activation_on="logits", seed=0)
        t_pairs = time.perf_counter() - start
        rows.append({"n": n, "itr": k, "plain_s": plain, "dbi_s": t_dbi, "pairs_stage1_s": t_pairs})
    return rows


def _cell(values: list[float]) -> str:
    return mean_std(values, 100)


def render(result: dict) -> str:
    rows, p = result["seeds"], result["params"]
    keys = list(rows[0]["detection"]["backdoor"])
    head = "| attack | what it did | " + " | ".join(f"{k} single | {k} pair" for k in keys) + " |"
    rule = "|---|---|" + "---|---|" * len(keys)

    def table(attacks: list[str]) -> list[str]:
        out = [head, rule]
        for a in attacks:
            did = ", ".join(f"{k} {statistics.mean(r['attack_info'][a][k] for r in rows):.4g}"
                            for k in rows[0]["attack_info"][a])
            cells = [_cell([r["detection"][a][k][kind] for r in rows]) for k in keys for kind in ("single", "pair")]
            out.append(f"| {a} | {did} | " + " | ".join(cells) + " |")
        return out

    attacks = list(rows[0]["detection"])
    lines = [
        "# Integrity benchmark (Gao et al. layout), mnist5k, LeNet-5", "",
        f"Written by `{result['command']}` on {result['date']}; {len(rows)} seed(s); torch {torch.__version__}. "
        "Detection rates in %, mean ± std over seeds. Single: fraction of samples whose label changed. "
        "Pair: fraction of pairs with at least one changed member (baselines: two random samples per pair).", "",
        f"Validset and DBI: {2 * p['n']} samples each (DBI: itr {p['dbi_itr']}, eps 1e-4). Pairs: {p['n']} pairs "
        f"attempted (stage 1 at most {p['pairs_itr']} Adam iterations, lr 1e-3; stage 2 alpha {p['alpha']:g}); "
        f"pairs made per seed: {[r['pairs_made'] for r in rows]}. AID is not implemented yet.", "",
        f"Model test accuracy: {_cell([r['accuracy'] for r in rows])} %.", "",
        "## After a backdoor attack (Table 2 layout)", "", *table(["backdoor"]), "",
        "## After fine-tuning at small learning rates (Table 3 layout)", "",
        f"SGD, {p['finetune_steps']} steps of 64 attacker images. 'changed_fraction' is the fraction of "
        "parameters whose float32 value changed at all: an update below half an ulp leaves a weight as it was.", "",
        *table([a for a in attacks if a.startswith("finetune")]), "",
        "## After magnitude pruning (Fig. 3 layout, global L1)", "", *table([a for a in attacks if a.startswith("prune")]),
        "", "## After int8 weight quantization (Table 4 layout; fake quantization, dequantized to float32)", "",
        *table([a for a in attacks if a.startswith("int8")]), "",
        "## False alarms: the untouched model in other environments", "",
        "| environment | " + " | ".join(f"{k} single | {k} pair" for k in keys) + " |", "|---|" + "---|---|" * len(keys),
    ]
    for e in FALSE_ALARM_ENVS:
        cells = [_cell([r["false_alarms"][e][k][kind] for r in rows]) for k in keys for kind in ("single", "pair")]
        lines.append(f"| {envs.get(e).description} | " + " | ".join(cells) + " |")
    lines += ["", "## Cost of the core optimisation (Table 5 layout)", "",
              "| samples | iterations | plain forward+backward | DBI | ratio | Pairs stage 1 | ratio |",
              "|---|---|---|---|---|---|---|"]
    for t in result["timing"]:
        lines.append(f"| {t['n']} | {t['itr']} | {t['plain_s']:.2f} s | {t['dbi_s']:.2f} s | "
                     f"{t['dbi_s'] / t['plain_s']:.2f}x | {t['pairs_stage1_s']:.2f} s | "
                     f"{t['pairs_stage1_s'] / t['plain_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False) -> Path:
    """Run the benchmark and write ``integrity.md`` and ``integrity.json`` to ``out_dir``."""
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    ds = data.load("mnist5k")
    rows = [run_seed(s, p, ds) for s in tqdm(range(p["seeds"]), desc="seeds", disable=not progress)]
    result = {
        "command": command("integrity", quick=quick, seeds=seeds),
        "date": today(),
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
        "seeds": rows,
        "timing": time_core(p, ds),
    }
    return write(out_dir, "integrity", result, render(result))
