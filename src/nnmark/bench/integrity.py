"""``nnmark bench integrity``: Gao et al.'s comparison layout (Tables 2-5, Fig. 3) on three cases.

Cases: LeNet-5 and ResNet-20 on mnist5k, LeNet-5 on the 8x8 digits. For each case and seed: train
the model, make Validset (natural test images), DBI, AID and Pairs keys (Pairs at the paper's
adjacent crossing, margin 0, and at several head margins), attack the model (backdoor; fine-tuning
at lr 1e-10 ... 1e-3 beside the fraction of weights it really changed; global magnitude pruning;
int8 quantization: fake per-tensor, fake per-channel, torch's dynamic and static PTQ) and record
detection rates per sample and per pair (a pair detects when either member flips; for the
baselines, pairs are two random samples, as the paper forms them). Also: false alarms of the
untouched model in other numeric environments (float64, oneDNN off, one sample per call, and every
``onnxruntime*`` environment ``nnmark.envs.ENVIRONMENTS`` holds), detection vs margin beside those
false alarms (from which the default margin is chosen), and the cost of each method's core
optimisation against plain forward+backward passes (Table 5 layout).

Full settings (the paper's are 150 pairs, 10,000 iterations, >= 3 seeds; on one loaded CPU core
they would take hours, so the full mode is smaller, and the Markdown says so):

- LeNet-5 / mnist5k and LeNet-5 / digits: 3 seeds, 150 pairs (300 baseline samples; digits has
  only 179 natural test images for Validset), 1,000 iterations for DBI, AID and Pairs stage 1.
- ResNet-20 / mnist5k: 1 seed, 2 training epochs, 50 pairs (100 baseline samples), 1,000 iterations,
  stage-2 alpha 1e-4 (the paper's value for its larger VGG16). Measured: after 100 stage-1 iterations
  the head margins |h_1 - h_0| were still 4-5 (0.6 after 1,000), and at alpha 1e-5 no sample crossed
  within 2,000 steps; with |grad_x (h_1 - h_0)|_1 ~ 50, a 1e-4 sign step moves the margin <= 0.005.
- 'Pairs head-act' (eq. 6's activation term over the head's 2 outputs instead of the N logits) on
  the LeNet-5 / mnist5k and digits cases, at the default margin.
- DBI's step is scaled to keep the paper's path length: eps = 1e-4 * 10,000 / itr (1e-3 at 1,000).
- Pairs: stage 1 and stage 2 run once per seed; each margin widens the same crossings
  (``pairing.widen_pairs``), so the margin rows differ only by the margin.
- Table 5 timing runs ``timing_itr`` iterations (200 on LeNet, 5 on ResNet-20) and reports seconds
  per 1,000 iterations, scaled linearly.

Quick mode (a smoke run of about a minute): the two LeNet-5 cases only (ResNet-20 alone would take
minutes), one seed, 8 pairs, 100 iterations, alpha 1e-5, 'Pairs head-act' on mnist5k only.

Any model (``run(model=..., data_spec=...)``, ``nnmark bench integrity --model``): one case with the settings of
the LeNet-5 / mnist5k case (``FOREIGN_CASE``; in quick mode its quick settings), a fresh model of the source's
architecture per seed trained on ``data_spec`` (``bench.subject``: which sources are refused, and why), so the
tables have the same rows as the zoo run; its files are ``integrity-NAME.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from nnmark import data, envs, models
from nnmark.attacks import (
    backdoor, finetune, measure, prune, quantize_dynamic_torch, quantize_int8, quantize_static_torch,
)
from nnmark.bench import plots, subject
from nnmark.bench.common import ARCH_NAMES, document, header, mean_std, parameters, section, table, write
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.errors import ModelError, NnmarkError, first_line
from nnmark.keys import KeyFile
from nnmark.marks.integrity import aid, baselines, dbi, pairing
from nnmark.oracles import Oracle, TorchOracle

SECRET, USER = b"nnmark-bench-secret", "bench"
FULL = {
    "seeds": 3, "alpha": 1e-6, "max_steps": 2000, "margins": (0.0, 1e-4, 1e-3, 1e-2), "backdoor_steps": 2000,
    "finetune_steps": 10, "prune": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
    "cases": (
        {"data": "mnist5k", "arch": "lenet5", "seeds": 3, "epochs": 8, "n": 150, "itr": 1000, "timing_itr": 200,
         "head_act": True},
        {"data": "mnist5k", "arch": "resnet20", "seeds": 1, "epochs": 2, "n": 50, "itr": 1000, "timing_itr": 5,
         "alpha": 1e-4, "head_act": False},
        {"data": "digits", "arch": "lenet5", "seeds": 3, "epochs": 8, "n": 150, "itr": 1000, "timing_itr": 200,
         "head_act": True},
    ),
    "timing_n": (150, 300),
}
QUICK = {
    "seeds": 1, "alpha": 1e-5, "max_steps": 500, "margins": (0.0, 1e-3), "backdoor_steps": 300,
    "finetune_steps": 10, "prune": (0.01, 0.1),
    "cases": (
        {"data": "mnist5k", "arch": "lenet5", "seeds": 1, "epochs": 3, "n": 8, "itr": 100, "timing_itr": 5,
         "head_act": True},
        {"data": "digits", "arch": "lenet5", "seeds": 1, "epochs": 3, "n": 8, "itr": 100, "timing_itr": 5,
         "head_act": False},
    ),
    "timing_n": (8, 16),
}
FINETUNE_LRS = (1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
PAPER_DBI_PATH = 1e-4 * dbi.PAPER_ITR
FOREIGN_CASE = 0
"""The case whose settings a foreign model's run takes (LeNet-5 / mnist5k)."""
MARGIN_ATTACKS = ("backdoor", "finetune lr=1e-10", "finetune lr=1e-08", "finetune lr=1e-06", "prune 0.001",
                  "int8 per-tensor (fake)")


def case_name(case: dict) -> str:
    return f"{ARCH_NAMES.get(case['arch'], case['arch'])} / {case['data']}"


def false_alarm_envs() -> list[str]:
    """The environments the false-alarm table uses: ``envs.calibration_environments()`` (float64, oneDNN off, batch1,
    and CUDA where a GPU is here) and any onnxruntime* one here."""
    return envs.calibration_environments() + [e for e in envs.ENVIRONMENTS if e.startswith("onnxruntime")]


# --- keys ---------------------------------------------------------------------------------------------


def pairs_keys(oracle: TorchOracle, case: dict, p: dict, seed: int, *, activation_on: str,
               margins: tuple[float, ...], prefix: str) -> dict[str, KeyFile]:
    """Pairs keys ``{prefix} m={margin}``, one per margin, from one stage 1 and one stage 2 (``pairing.create``'s steps)."""
    n = case["n"]
    head = pairing.derive_head(SECRET, USER, oracle.num_classes)
    x, _, _ = pairing.approach_boundary(oracle, head, n, lam=pairing.DEFAULT_LAMBDA, lr=pairing.PAPER_LR,
                                        max_itr=case["itr"], tol=1e-6, patience=20, activation_on=activation_on,
                                        seed=seed)
    alpha = case.get("alpha", p["alpha"])
    before, after, y, ok, _ = pairing.cross_boundary(oracle, head, x, alpha=alpha, max_steps=p["max_steps"])
    before, after, y = before[ok], after[ok], y[ok]
    out = {}
    if len(y) == 0:
        return out
    for margin in margins:
        b, a = before, after
        if margin > 0:
            b, a, kept, _ = pairing.widen_pairs(oracle, head, before, after, y, alpha=alpha, margin=margin,
                                                max_steps=p["max_steps"])
            b, a = b[kept], a[kept]
        if len(b) == 0:
            continue
        queries, expected, _, _ = pairing.final_labels(oracle, head, torch.stack([b, a], dim=1).flatten(0, 1))
        config = {"user_id": USER, "num_classes": oracle.num_classes, "margin": margin, "alpha": alpha,
                  "max_itr": case["itr"], "activation_on": activation_on, "seed": seed, "n_pairs_requested": n,
                  "n_pairs": len(expected) // 2}
        out[f"{prefix} m={margin:g}"] = KeyFile(method=pairing.METHOD, config=config, queries=queries,
                                                expected=expected)
    return out


def make_keys(oracle: TorchOracle, ds: data.Dataset, case: dict, p: dict, seed: int
              ) -> tuple[dict[str, KeyFile], dict[str, str]]:
    """Validset, DBI and AID keys of 2n samples (Validset: at most the natural pool), and the Pairs keys; and the
    keys that cannot be made for this model, with why (AID on a model without activation modules)."""
    gen = torch.Generator().manual_seed(seed)
    pool = natural_pool(ds)
    n2 = 2 * case["n"]
    sources = ds.train.x[torch.randperm(len(ds.train), generator=gen)[:n2]]
    out = {
        "Validset": baselines.natural(oracle, pool.x[torch.randperm(len(pool), generator=gen)[:n2]]),
        "DBI": dbi.create(oracle, sources, itr=case["itr"], eps=PAPER_DBI_PATH / case["itr"]),
    }
    skipped = {}
    try:
        out["AID"] = aid.create(oracle, sources, itr=case["itr"])
    except ModelError as e:
        skipped["AID"] = str(e)
    out.update(pairs_keys(oracle, case, p, seed, activation_on="logits", margins=p["margins"], prefix="Pairs"))
    if case["head_act"]:
        out.update(pairs_keys(oracle, case, p, seed, activation_on="head", margins=(pairing.DEFAULT_MARGIN,),
                              prefix="Pairs head-act"))
    return out, skipped


def detection(suspect: Oracle, key: KeyFile, seed: int) -> dict[str, float]:
    """Per-sample and per-pair detection rates of one key on one suspect."""
    if key.method == pairing.METHOD:
        v = pairing.verify(suspect, key, secret=SECRET)
        return {"single": v.details["sample_change_rate"], "pair": v.statistic}
    changed = suspect.labels(key.queries) != key.expected
    order = torch.randperm(len(changed), generator=torch.Generator().manual_seed(seed))
    pairs = changed[order[: len(order) // 2 * 2]].view(-1, 2).any(dim=1)
    return {"single": changed.double().mean().item(), "pair": pairs.double().mean().item()}


# --- attacks ------------------------------------------------------------------------------------------


def attacks(model: torch.nn.Module, ds: data.Dataset, p: dict, seed: int) -> tuple[dict, dict, dict]:
    """Attacked models by name, what each attack measurably did, and the attacks that could not run (why)."""
    atk = attacker_data(ds)
    out, info, skipped = {}, {}, {}
    bd, report = backdoor(model, atk.x, atk.y, target=0, max_steps=p["backdoor_steps"], test=natural_pool(ds),
                          lr=1e-3, seed=seed)
    out["backdoor"] = bd
    info["backdoor"] = {"poison_success": report.poison_success, "steps": report.steps,
                        "clean_accuracy": report.clean_accuracy_after}
    for frozen in (False, True) if models.batchnorm_layers(model) else (False,):
        for lr in FINETUNE_LRS:
            name = f"finetune {'frozen-BN ' if frozen else ''}lr={lr:g}"
            out[name] = finetune(model, atk.x, atk.y, lr=lr, steps=p["finetune_steps"], seed=seed, freeze_bn=frozen)
            info[name] = {"changed_fraction": measure.changed_fraction(model, out[name]),
                          "changed_buffers": measure.changed_buffer_fraction(model, out[name])}
    for f in p["prune"]:
        out[f"prune {f:g}"] = prune(model, f, scope="global")
        info[f"prune {f:g}"] = {"sparsity": measure.sparsity(out[f"prune {f:g}"])}
    for g in ("tensor", "channel"):
        name = f"int8 per-{g} (fake)"
        out[name] = quantize_int8(model, granularity=g)
        info[name] = {"changed_fraction": measure.changed_fraction(model, out[name])}
    torch_ptq = {"int8 torch dynamic PTQ": lambda: quantize_dynamic_torch(model),
                 "int8 torch static PTQ": lambda: quantize_static_torch(model, atk.x[:256])}
    for name, make in torch_ptq.items():
        try:
            out[name] = make()
            labels = TorchOracle(out[name], ds.shape, ds.num_classes).labels(ds.test.x)
            info[name] = {"accuracy": (labels == ds.test.y).double().mean().item()}
        except (NnmarkError, ValueError, RuntimeError, NotImplementedError) as e:
            out.pop(name, None)
            skipped[name] = first_line(e)
    return out, info, skipped


# --- one seed, timing ---------------------------------------------------------------------------------


def run_seed(case: dict, seed: int, p: dict, ds: data.Dataset, build: subject.Builder) -> dict:
    torch.manual_seed(seed)
    model = build(ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=case["epochs"], seed=seed)
    oracle = TorchOracle(model, ds.shape, ds.num_classes)
    keys, keys_skipped = make_keys(oracle, ds, case, p, seed)
    attacked, info, skipped = attacks(model, ds, p, seed)
    rates = {a: {k: detection(TorchOracle(m, ds.shape, ds.num_classes), key, seed) for k, key in keys.items()}
             for a, m in attacked.items()}
    false_alarms, flipped, env_skipped = {}, {}, {}
    for e in false_alarm_envs():
        try:
            suspect = envs.get(e).oracle(model, ds.shape)
            false_alarms[e] = {k: detection(suspect, key, seed) for k, key in keys.items()}
        except NnmarkError as err:
            env_skipped[e] = str(err)
            continue
        flipped[e] = {k: round(false_alarms[e][k]["single"] * len(key.expected)) for k, key in keys.items()}
    return {"seed": seed, "accuracy": models.accuracy(model, ds.test), "attack_info": info,
            "attacks_skipped": skipped, "detection": rates, "false_alarms": false_alarms,
            "false_alarm_samples": flipped, "envs_skipped": env_skipped,
            "key_sizes": {k: len(key.expected) for k, key in keys.items()}, "keys_skipped": keys_skipped,
            "aid_coverage": [keys["AID"].config["coverage_start"], keys["AID"].config["coverage_end"]]
            if "AID" in keys else None}


def time_core(case: dict, p: dict, ds: data.Dataset, build: subject.Builder) -> list[dict]:
    """Seconds per 1,000 iterations of each core optimisation and of plain forward+backward passes (one run)."""
    model = build(ds.shape, ds.num_classes).eval()
    oracle = TorchOracle(model, ds.shape, ds.num_classes)
    head = pairing.derive_head(SECRET, USER, ds.num_classes)
    k = case["timing_itr"]
    scale = 1000 / k
    rows = []
    for n in p["timing_n"]:
        x = ds.train.x[:n]
        runs = {
            "plain": lambda: [oracle.gradient(lambda z: z.sum(dim=1), x, on="logits") for _ in range(k)],
            "DBI": lambda: dbi.fragilize(oracle, x, 1e-4, k),
            "AID": lambda: aid.find_edge_points(oracle, x, lr=aid.PAPER_LR, itr=k, beta=aid.DEFAULT_BETA,
                                                threshold=0.0),
            "Pairs stage 1": lambda: pairing.approach_boundary(
                oracle, head, n, lam=pairing.DEFAULT_LAMBDA, lr=pairing.PAPER_LR, max_itr=k, tol=0.0,
                patience=k + 1, activation_on="logits", seed=0),
        }
        row = {"n": n, "itr": k}
        for name, fn in runs.items():
            start = time.perf_counter()
            try:
                fn()
            except ModelError:  # the method cannot run on this model (make_keys says why); None: not timed
                row[name] = None
                continue
            row[name] = (time.perf_counter() - start) * scale
        rows.append(row)
    return rows


def choose_default_margin(result: dict) -> float | None:
    """The smallest margin whose Pairs keys had no false alarm in any environment, case and seed.

    Seeds where no pair of that margin was made (e.g. none crossed within the step budget) do not count.
    """
    for m in result["params"]["margins"]:
        key = f"Pairs m={m:g}"
        alarms = [r["false_alarm_samples"][e][key] for c in result["cases"].values() for r in c["seeds"]
                  if key in r["key_sizes"] for e in r["false_alarm_samples"]]
        if alarms and max(alarms) == 0:
            return m
    return None


# --- report -------------------------------------------------------------------------------------------


def _cell(values: list[float]) -> str:
    return mean_std(values, 100)


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def _keys(rows: list[dict]) -> list[str]:
    """The keys every seed made (a Pairs margin may have made no pair on some seed)."""
    return [k for k in rows[0]["key_sizes"] if all(k in r["key_sizes"] for r in rows)]


def detection_table(rows: list[dict], attacks_: list[str], keys: list[str]) -> str:
    """Attack, what it did, then each key's 'single / pair' detection rates (%)."""
    body = []
    for a in attacks_:
        did = ", ".join(f"{f} {_mean([r['attack_info'][a][f] for r in rows]):.4g}" for f in rows[0]["attack_info"][a])
        body.append([a, did, *(f"{_cell([r['detection'][a][k]['single'] for r in rows])} / "
                               f"{_cell([r['detection'][a][k]['pair'] for r in rows])}" for k in keys)])
    return table(["attack", "what it did", *(f"{k} single / pair" for k in keys)], body)


def _intro(result: dict) -> str:
    """Title, what the rates mean, and the settings where they differ from the paper."""
    p, model = result["params"], result.get("model")
    cases = [f"- {case_name(c)}: {c['seeds']} seed(s), {c['epochs']} training epochs, {c['n']} pairs "
             f"(baselines: {2 * c['n']} samples), {c['itr']} iterations for DBI (eps "
             f"{PAPER_DBI_PATH / c['itr']:g}, the paper's 1e-4 x 10,000 path), AID (Adam, lr 1e-3, beta "
             f"{aid.DEFAULT_BETA:g}) and Pairs stage 1 (Adam, lr 1e-3, lambda {pairing.DEFAULT_LAMBDA:g}); "
             f"Pairs stage-2 alpha {c.get('alpha', p['alpha']):g}." for c in p["cases"]]
    common = [
        f"- Pairs stage 2 and margins: at most {p['max_steps']} steps; margins "
        f"{', '.join(f'{m:g}' for m in p['margins'])} widen the same crossings ('Pairs m=0' is the paper's "
        "adjacent pair).",
        "- Activation term of eq. 6: 'Pairs' sums |output_i| over the model's N logits (nnmark's default); "
        f"'Pairs head-act' sums it over the head's 2 outputs (own stage 1 and 2, margin {pairing.DEFAULT_MARGIN:g}; "
        f"cases {', '.join(case_name(c) for c in p['cases'] if c['head_act']) or 'none'}).",
        f"- Backdoor: 10 poisoned attacker images (3x3 trigger, target 0), SGD lr 1e-3 (paper 1e-5) until every "
        f"poisoned image is classified as the target, at most {p['backdoor_steps']} steps. Fine-tuning: SGD, "
        f"{p['finetune_steps']} steps of 64 attacker images. Attacker images are disjoint from every key's samples.",
        "- The paper's models (ResNet-18, VGG16, ResNet-152 on CIFAR-10, GTSRB, Flowers102) are replaced by small "
        "ones that train here in minutes.",
    ]
    return "\n\n".join([
        "# Integrity benchmark (Gao et al. layout): Validset, DBI, AID, Pairs",
        f"Written by `{result['command']}` on {result['date']}; torch {torch.__version__}, one CPU thread. "
        "Detection rates in %, mean ± std over seeds. *single*: fraction of samples whose label changed; "
        "*pair*: fraction of pairs with at least one changed member (Validset, DBI, AID: two random samples per "
        "pair, as the paper forms them; Pairs: the key's own pairs, whose binary label is the key-derived head's)."
        + (subject.fewer_seeds(p["cases"][0]["seeds"], FULL["cases"][FOREIGN_CASE]["seeds"], result["command"])
           if model else ""),
        *([f"{subject.describe(model)} Run with the settings of the zoo's "
           f"{case_name(FULL['cases'][FOREIGN_CASE])} case."] if model else []),
        "Settings, and where they differ from the paper (150 pairs, 10,000 iterations, >= 3 seeds):",
        "\n".join(cases + common),
    ])


def _case_summary(cases: dict) -> str:
    """One line per case: test accuracy, key sizes (seed 0) and AID's neuron coverage (where AID ran)."""
    def coverage(rows: list[dict]) -> str:
        if not all(r["aid_coverage"] for r in rows):
            return ""
        return (f"; AID neuron coverage {_mean([r['aid_coverage'][0] for r in rows]):.3f} -> "
                f"{_mean([r['aid_coverage'][1] for r in rows]):.3f}")

    return "\n".join(
        f"{name}: test accuracy {_cell([r['accuracy'] for r in c['seeds']])} %; key sizes (seed 0) "
        + ", ".join(f"{k} {v}" for k, v in c["seeds"][0]["key_sizes"].items()) + coverage(c["seeds"]) + "."
        for name, c in cases.items())


def _per_case(cases: dict, make: Callable[[list[dict]], str | None]) -> list[str]:
    """A level-3 section per case with ``make``'s table of the case's seeds; none where it makes none."""
    return [section(name, t, level=3) for name, c in cases.items() if (t := make(c["seeds"])) is not None]


def _detection_section(cases: dict, title: str, text: str, prefix: str) -> str:
    """A section of detection tables, one per case, of the attacks whose names start with ``prefix``."""
    def make(rows: list[dict]) -> str | None:
        chosen = [a for a in rows[0]["detection"] if a.startswith(prefix) and all(a in r["detection"] for r in rows)]
        return detection_table(rows, chosen, _keys(rows)) if chosen else None

    return section(title, text, *_per_case(cases, make))


DETECTION_SECTIONS = (
    ("After a backdoor attack (Table 2 layout)",
     "Detection after implanting a BadNets backdoor. 'what it did': share of poisoned images classified as "
     "the target, steps, clean accuracy after. The paper: DBI and AID about 27-62 % single / 48-86 % pair, "
     "Pairs 92-99.6 %, Validset 0-3 %.", "backdoor"),
    ("After fine-tuning at small learning rates (Table 3 layout)",
     "'changed_fraction' is the fraction of parameters whose float32 value changed at all: an update below "
     "half an ulp leaves a weight as it was, and then no method can detect anything. 'changed_buffers' is "
     "the same for BatchNorm running statistics: a train-mode fine-tune moves them by the BatchNorm "
     "momentum whatever the learning rate, so on models with BatchNorm the 'frozen-BN' rows (BatchNorm kept "
     "in eval mode) show what the learning rate alone does. The paper's claim is Pairs far above DBI and "
     "AID at the smallest rates (e.g. 50-78 % vs 18-49 % at 1e-10/1e-9 on CIFAR-10).", "finetune"),
    ("After magnitude pruning (Fig. 3 layout; global L1, plot in integrity.png)",
     "'sparsity' is the measured fraction of zero weights. The paper: Pairs keep a high detection rate "
     "even at 0.1 % pruning.", "prune"),
    ("After int8 quantization (Table 4 layout)",
     "'(fake)': symmetric int8 weight quantization per tensor or per output channel, dequantized back to "
     "float32. 'torch dynamic PTQ': ``torch.ao.quantization.quantize_dynamic`` (Linear layers, qint8). "
     "'torch static PTQ': eager-mode static quantization calibrated on 256 attacker images. The paper: "
     "Pairs single ('unpaired') above the baselines' single rates; paired rates close to the baselines'.", "int8"),
)
"""(title, text, attack-name prefix) of the detection sections, in the order of the paper's tables."""


def _skipped(cases: dict) -> str:
    """A line per key or attack that could not run here, and why (runs before keys were skipped record none)."""
    def reasons(rows: list[dict]) -> dict[str, str]:
        return {a: why for r in rows for a, why in {**r.get("keys_skipped", {}), **r["attacks_skipped"]}.items()}

    return "\n".join(f"- {name}: {a} could not run here: {why}" for name, c in cases.items()
                     for a, why in reasons(c["seeds"]).items())


def false_alarm_table(rows: list[dict]) -> str:
    """Samples (summed over seeds) per environment and key whose label changed, then the skipped environments."""
    keys = list(rows[0]["key_sizes"])
    body = [[envs.get(e).description, *(sum(r["false_alarm_samples"][e].get(k, 0) for r in rows) for k in keys)]
            for e in rows[0]["false_alarm_samples"]]
    skipped = {e: why for r in rows for e, why in r["envs_skipped"].items()}
    return "\n".join([table(["environment", *keys], body), *(f"- skipped {e}: {why}" for e, why in skipped.items())])


def _false_alarm_section(result: dict) -> str:
    """False alarms of the untouched model, a table per case, and the environments used."""
    used = result["false_alarm_envs"]
    return section(
        "False alarms: the untouched model in other environments",
        "Samples (summed over seeds) whose label changes when the intact model runs in another numeric "
        "environment; for Pairs, a changed member makes its pair (and the verdict) an alarm. Every nonzero "
        "cell would accuse an intact deployment.",
        *_per_case(result["cases"], false_alarm_table),
        f"Environments used: {', '.join(used)}; onnxruntime environments present "
        f"here: {', '.join(e for e in used if e.startswith('onnxruntime')) or 'none'}.")


def _margin_attacks(rows: list[dict]) -> list[str]:
    return [a for a in MARGIN_ATTACKS if a in rows[0]["detection"]]


def margin_table(rows: list[dict], margins: list[float]) -> str:
    """Per margin: pairs made per seed, pair detection (%) under the margin attacks, false-alarm members."""
    chosen = _margin_attacks(rows)
    body = []
    for m in margins:
        k = f"Pairs m={m:g}"
        if not all(k in r["key_sizes"] for r in rows):
            body.append([f"{m:g}", "none", *("-" for _ in chosen), "-"])
            continue
        alarms = sum(r["false_alarm_samples"][e].get(k, 0) for r in rows for e in r["false_alarm_samples"])
        body.append([f"{m:g}", ", ".join(str(r["key_sizes"][k] // 2) for r in rows),
                     *(_cell([r["detection"][a][k]["pair"] for r in rows]) for a in chosen), alarms])
    return table(["margin", "pairs made", *chosen, "false-alarm members"], body)


def _margin_section(result: dict) -> str:
    """Detection vs margin, a table per case, and the default margin it gives."""
    dm = result["default_margin"]
    return section(
        "Detection vs margin (the price of robustness to benign numerics)",
        "Pairs detection (pair rate, %) under a few attacks beside the false alarms (pair members flipped in "
        "any environment above, summed over seeds and environments), per margin. The default margin is the "
        "smallest with no false alarm in any case, seed and environment: "
        f"**{'none of those tried' if dm is None else f'{dm:g}'}**.",
        *_per_case(result["cases"], lambda rows: margin_table(rows, result["params"]["margins"])))


ACTIVATION_KEYS = {"N logits": f"Pairs m={pairing.DEFAULT_MARGIN:g}",
                   "head's 2 outputs": f"Pairs head-act m={pairing.DEFAULT_MARGIN:g}"}
"""Activation term of eq. 6 -> the key made with it at the default margin."""


def activation_table(rows: list[dict]) -> str | None:
    """Per activation term: pairs made per seed and pair detection (%) under the margin attacks (None where a
    seed lacks one of the two keys)."""
    if not all(k in r["key_sizes"] for r in rows for k in ACTIVATION_KEYS.values()):
        return None
    chosen = _margin_attacks(rows)
    return table(["activation term", "pairs made", *chosen],
                 [[label, ", ".join(str(r["key_sizes"][k] // 2) for r in rows),
                   *(_cell([r["detection"][a][k]["pair"] for r in rows]) for a in chosen)]
                  for label, k in ACTIVATION_KEYS.items()])


def _activation_section(cases: dict) -> str:
    """The two activation terms of eq. 6 side by side, a table per case that made both keys."""
    return section(
        "Activation term of eq. 6: the model's N logits or the head's 2 outputs",
        f"Pair detection (%) of pairs made with each activation term at margin {pairing.DEFAULT_MARGIN:g}, and "
        "how many pairs each made, under the attacks of the margin table.",
        *_per_case(cases, activation_table))


COST_METHODS = ("DBI", "AID", "Pairs stage 1")


def cost_table(cases: dict) -> str:
    """Table 5 layout: seconds per 1,000 iterations of each core optimisation and their ratio to plain passes
    ("n/a" for a method that cannot run on the case's model)."""
    def seconds(t: dict, m: str) -> str:
        return "n/a" if t[m] is None else f"{t[m]:.1f} s"

    def ratio(t: dict, m: str) -> str:
        return "n/a" if t[m] is None else f"{t[m] / t['plain']:.2f}x"

    return table(
        ["case", "samples", "measured itr", "plain fwd+bwd", *COST_METHODS, "DBI ratio", "AID ratio", "Pairs ratio"],
        [[name, t["n"], t["itr"], seconds(t, "plain"), *(seconds(t, m) for m in COST_METHODS),
          *(ratio(t, m) for m in COST_METHODS)] for name, c in cases.items() for t in c["timing"]])


def render(result: dict) -> str:
    """The Markdown report of a run."""
    cases = result["cases"]
    blocks = [_intro(result), _case_summary(cases),
              *(_detection_section(cases, *s) for s in DETECTION_SECTIONS), _skipped(cases),
              _false_alarm_section(result), _margin_section(result), _activation_section(cases),
              section("Cost of the core optimisation (Table 5 layout)",
                      "Seconds per 1,000 iterations (measured over the stated iterations, scaled linearly), all "
                      "methods side by side in one run on an untrained model; ratio = time / plain forward+backward "
                      "passes over the same batch (the floor no method can beat). The paper: Pairs about DBI's cost, "
                      "AID 1.5-2.3x DBI.", cost_table(cases))]
    return document(*(b for b in blocks if b))


def pruning_curves(result: dict) -> dict[str, tuple[list[float], dict[str, list[float]]]]:
    """Fig. 3's points per case: the pruned weights (%), and each key's mean pair detection (%) there."""
    curves = {}
    for name, c in result["cases"].items():
        rows = c["seeds"]
        fractions = [f for f in result["params"]["prune"] if f"prune {f:g}" in rows[0]["detection"]]
        curves[name] = ([100 * f for f in fractions],
                        {k: [100 * _mean([r["detection"][f"prune {f:g}"][k]["pair"] for r in rows]) for f in fractions]
                         for k in _keys(rows)})
    return curves


def figure(result: dict) -> bytes:
    """integrity.png: pair detection vs pruning fraction, one line per key, one panel per case (Fig. 3 layout)."""
    return plots.detection_vs_pruning(pruning_curves(result))


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False,
        model: models.LoadedModel | None = None, data_spec: str | None = None) -> Path:
    """Run the benchmark; write ``integrity.md``, ``integrity.json`` and ``integrity.png`` to ``out_dir``.

    ``seeds`` overrides every case's seed count. ``model``: a source that can be trained; its architecture is the
    one case, trained on ``data_spec`` (default: the dataset its checkpoint names; see ``subject.foreign``), and
    the files are ``integrity-NAME.*``.
    """
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    foreign = None if model is None else subject.foreign(model, data_spec)
    cases = p["cases"] if foreign is None else [dict(p["cases"][FOREIGN_CASE], arch=foreign.name, data=foreign.data)]
    cases = [dict(c, seeds=seeds or c["seeds"]) for c in cases]
    named = foreign or subject.zoo(cases[0]["arch"])  # what names the command, the result and its files
    result = {
        **header(named.command("integrity"), {**p, "cases": cases}, quick=quick, seeds=seeds),
        **named.result_fields(),
        "false_alarm_envs": false_alarm_envs(),
        "cases": {},
    }
    for case in tqdm(cases, desc="cases", disable=not progress):
        who = foreign or subject.zoo(case["arch"])
        ds = who.dataset(case["data"])
        rows = [run_seed(case, s, p, ds, who.build)
                for s in tqdm(range(case["seeds"]), desc="seeds", disable=not progress)]
        result["cases"][case_name(case)] = {"seeds": rows, "timing": time_core(case, p, ds, who.build)}
    result["default_margin"] = choose_default_margin(result)
    return write(out_dir, named.stem("integrity"), result, render(result), figure(result))
