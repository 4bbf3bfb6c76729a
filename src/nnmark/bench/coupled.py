"""``nnmark bench ownership-watermark``: Wen et al.'s function-coupled watermarks against the backdoor baselines.

Paper: Wen, Li, Jiang, Xu, "On function-coupled watermarks for deep neural networks" (2023): Table 2
(effectiveness and fidelity), Fig. 5/6 (fine-tuning), Fig. 7 (transfer learning), Fig. 8/9 (pruning), Table 3
(overwriting), Fig. 10-12 (ablation of masked training and training-time fine-tuning) and Table 4 (all
methods side by side), in miniature on mnist5k (4,000 training images) with LeNet-5 and ResNet-20.

Per seed and architecture: a clean model, the coupled variants (direct; invisible r = 0.5/0.7/0.9; the
ablation "plain" variants trained without masking and without training-time fine-tuning), and on LeNet-5
the baselines (``nnmark.marks.ownership.backdoor_wm``: Zhang content / noise / unrelated, Adi from scratch
and Adi fine-tuned from the clean model), all from the same initial weights. Attacks on each watermarked
model:

- fine-tuning: trial k = k successive FTAL sessions of one epoch each (``attacks.finetune_mode``, SGD with
  momentum 0.9, lr 0.01, batch 64) on the attacker's 500 images (``attacker_data``: mnist5k's test split
  holds 1,000 images, so the paper's 1,000-2,000 are not available disjoint from the key);
- L1-unstructured pruning of each layer (``attacks.prune(..., scope="layer")``, torch's ``l1_unstructured``)
  at 0.1 ... 0.9, no fine-tuning;
- transfer learning to scikit-learn digits upsampled to 28 x 28 (``attacks.transfer``, Adam lr 1e-4, the
  10-class head kept; trial k = k epochs over the 1,438 digit training images);
- overwriting (``attacks.overwrite``, Adam lr 1e-4): a second coupled watermark of the victim's kind (direct
  for the baselines) from two other base classes to another target, fused from the attacker's images
  (36 training triggers, 90 distinct other pairs to check it), trained in with the attacker's 500 images.

Every cell reports the authentication success beside the null p0 the verifier tested it against (the suspect's
rate of answering t on clean images / plain source images, or chance, whichever is highest; Adi: the largest
label share) and the binomial p-value, so a model that answers t for everything does not count.

Deviations from the paper (documented in the Markdown): MNIST is mnist5k (4,000 training images), two seeds
by default; ResNet-20 (the paper: ResNet-18 on CIFAR-10) at width 0.5 (8/16/32 channels) and 5 epochs, with
the direct and invisible r = 0.5 rows and their ablations, to fit about 40 minutes on one CPU core (one
seed of the whole run took ~15 minutes); the baselines only on LeNet-5; Exponential weighting and
Entangled watermarks are not implemented. Frontier stitching (``nnmark.marks.ownership.frontier``) marks the clean
model; its "on the clean model" check is the model its key was made on (50% by construction).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark.attacks import finetune_mode, prune
from nnmark.attacks.overwrite import overwrite
from nnmark.attacks.transfer import transfer
from nnmark.bench import plots
from nnmark.bench.common import ARCH_NAMES, document, header, parameters, section, table, write
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.keys import KeyFile
from nnmark.marks.ownership import backdoor_wm, coupled, frontier
from nnmark.oracles import TorchOracle

STEM = "coupled"
NAME = "ownership-watermark"
PRUNE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FULL = {"seeds": 2, "archs": ("lenet5", "resnet20"), "epochs": {"lenet5": 8, "resnet20": 5},
        "width": {"lenet5": 1.0, "resnet20": 0.5},
        "variants": {"lenet5": ("direct", "invisible-0.5", "invisible-0.7", "invisible-0.9", "direct-plain",
                                "invisible-0.5-plain"),
                     "resnet20": ("direct", "invisible-0.5", "direct-plain", "invisible-0.5-plain")},
        "baselines": ("zhang-content", "zhang-noise", "zhang-unrelated", "adi-scratch", "adi-pretrained",
                      "frontier"),
        "ft_trials": 10, "ft_lr": 0.01, "prune": PRUNE, "transfer_trials": 10, "overwrite_epochs": 5,
        "adi_pretrained_epochs": 3, "adi_pretrained_lr": 2e-3}
QUICK = {"seeds": 1, "archs": ("lenet5",), "epochs": {"lenet5": 3}, "width": {"lenet5": 1.0},
         "variants": {"lenet5": ("direct", "direct-plain")}, "baselines": ("zhang-content", "adi-scratch", "frontier"),
         "ft_trials": 2, "ft_lr": 0.01, "prune": (0.5, 0.9), "transfer_trials": 1, "overwrite_epochs": 1,
         "adi_pretrained_epochs": 1, "adi_pretrained_lr": 2e-3}


# --- measuring ------------------------------------------------------------------------------------------


def check(model: torch.nn.Module, key: KeyFile, ds: data.Dataset) -> dict:
    """Verify ``key`` on ``model`` (labels only): success, null p0 and its parts, p-value, verdict, clean accuracy."""
    oracle = TorchOracle(model, ds.shape, ds.num_classes)
    verifier = {coupled.METHOD: coupled.verify, frontier.METHOD: frontier.verify}.get(key.method, backdoor_wm.verify)
    v = verifier(oracle, key)
    return {"success": v.statistic, "rate_clean": v.details["rate_clean"],
            "rate_plain": v.details.get("rate_plain"), "null": v.details["null"], "p_value": v.details["p_value"],
            "passed": v.passed, "accuracy": models.accuracy(model, ds.test)}


def _fresh(arch: str, ds: data.Dataset, p: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(arch, ds.shape, ds.num_classes, width=p["width"][arch])


def _mark(name: str, arch: str, ds: data.Dataset, clean: torch.nn.Module, p: dict, seed: int):
    """(watermarked model, key) for a coupled variant ("direct", "invisible-0.7", "...-plain") or a baseline."""
    epochs = p["epochs"][arch]
    if name.startswith("zhang-"):
        return backdoor_wm.embed(_fresh(arch, ds, p, seed), ds, kind=name.split("-")[1], epochs=epochs, seed=seed)
    if name == "adi-scratch":
        return backdoor_wm.embed(_fresh(arch, ds, p, seed), ds, kind="abstract", epochs=epochs, seed=seed)
    if name == "frontier":
        return frontier.embed(clean, ds, seed=seed)
    if name == "adi-pretrained":
        return backdoor_wm.embed(clean, ds, kind="abstract", epochs=p["adi_pretrained_epochs"],
                                 lr=p["adi_pretrained_lr"], seed=seed, pretrained=True)
    parts = name.split("-")
    plain = parts[-1] == "plain"
    r = float(parts[1]) if parts[0] == "invisible" else 0.5
    return coupled.embed(_fresh(arch, ds, p, seed), ds, kind=parts[0], r=r, epochs=epochs, seed=seed,
                         masked=not plain, tt_finetune=not plain)


def overwrite_key(key: KeyFile, ds: data.Dataset, seed: int) -> tuple[torch.Tensor, KeyFile]:
    """The attacker's second coupled watermark: K_wm training triggers and a coupled key of 90 other pairs.

    Two base classes and a target outside the victim's classes, fused (the victim's kind and r; direct for
    the baselines) from the attacker's own images.
    """
    used = {key.config.get(c) for c in ("target", "source")} | set(key.config.get("base", []))
    order = [c for c in torch.randperm(ds.num_classes, generator=torch.Generator().manual_seed(seed + 1)).tolist()
             if c not in used]
    i, j, t = order[:3]
    kind = key.config["kind"] if key.method == coupled.METHOD else "direct"
    r = key.config.get("r", 0.5)
    atk = attacker_data(ds)
    k_wm = math.floor(coupled.WM_FRACTION * len(ds.train))
    both = coupled.make_triggers(atk, (i, j), k_wm + coupled.N_VERIFY, kind=kind, r=r,
                                 generator=torch.Generator().manual_seed(seed + 2))
    pool = natural_pool(ds)
    new_key = KeyFile(method=coupled.METHOD, config={"base": [i, j], "target": t, "kind": kind, "r": r},
                      queries=both[k_wm:].contiguous(), expected=torch.full((coupled.N_VERIFY,), t),
                      extras={"plain": pool.x[(pool.y == i) | (pool.y == j)][: coupled.N_NULL].contiguous(),
                              "clean": pool.x[: coupled.N_NULL].contiguous()})
    return both[:k_wm], new_key


def attack_mark(model: torch.nn.Module, key: KeyFile, ds: data.Dataset, digits: data.Dataset, p: dict, seed: int,
                full_set: bool) -> dict:
    """Checks of one watermarked model: before, under fine-tuning trials, pruning, and (``full_set``) transfer
    and overwriting."""
    atk = attacker_data(ds)
    out = {"before": check(model, key, ds), "finetune": [], "prune": []}
    m = model
    for trial in range(1, p["ft_trials"] + 1):
        m = finetune_mode(m, atk.x, atk.y, mode="FTAL", epochs=1, lr=p["ft_lr"], seed=seed * 1000 + trial)
        out["finetune"].append(check(m, key, ds))
    for f in p["prune"]:
        out["prune"].append(check(prune(model, f, scope="layer"), key, ds))
    if not full_set:
        return out
    out["transfer"] = []
    m = model
    for trial in range(1, p["transfer_trials"] + 1):
        m = transfer(m, digits.train, epochs=1, seed=seed * 1000 + trial)
        out["transfer"].append({**check(m, key, ds), "digits_accuracy": models.accuracy(m, digits.test)})
    x_new, new_key = overwrite_key(key, ds, seed)
    t_new = new_key.config["target"]
    m = overwrite(model, x_new, torch.full((len(x_new),), t_new), atk, epochs=p["overwrite_epochs"], seed=seed)
    out["overwrite"] = {"original": check(m, key, ds), "new": check(m, new_key, ds),
                        "new_on_victim": check(model, new_key, ds), "new_classes": new_key.config}
    return out


def run_arch(arch: str, seed: int, p: dict, ds: data.Dataset, digits: data.Dataset, progress: bool) -> dict:
    clean = _fresh(arch, ds, p, seed)
    models.train(clean, ds.train, epochs=p["epochs"][arch], seed=seed)
    names = list(p["variants"][arch]) + (list(p["baselines"]) if arch == "lenet5" else [])
    marks = {}
    for name in tqdm(names, desc=f"{arch} seed {seed}", disable=not progress):
        model, key = _mark(name, arch, ds, clean, p, seed)
        result = attack_mark(model, key, ds, digits, p, seed, full_set=not name.endswith("plain"))
        result["on_clean_model"] = check(clean, key, ds)
        result["method"], result["config"] = key.method, key.config
        marks[name] = result
    return {"clean_accuracy": models.accuracy(clean, ds.test),
            "clean_digits_accuracy": models.accuracy(clean, digits.test), "marks": marks}


# --- rendering ------------------------------------------------------------------------------------------


def _cell(checks: list[dict], acc: bool = True) -> str:
    """'success / p0 / p-value verdict / accuracy' over seeds: means, the largest p-value, found in k of n."""
    s = statistics.mean(c["success"] for c in checks) * 100
    null = statistics.mean(c["null"] for c in checks) * 100
    pv = max(c["p_value"] for c in checks)
    found = sum(c["passed"] for c in checks)
    mark = ("✓" if found == len(checks) else "✗" if found == 0 else f"{found}/{len(checks)}")
    text = f"{s:.0f} / {null:.0f} / {pv:.0e} {mark}"
    if acc:
        text += f" / {statistics.mean(c['accuracy'] for c in checks) * 100:.1f}"
    return text


def _marks(result: dict, arch: str) -> list[str]:
    return list(result["seeds"][0]["archs"][arch]["marks"])


def _coupled_marks(result: dict, arch: str) -> list[str]:
    """The coupled variants, the ablation rows among them (no baseline)."""
    return [m for m in _marks(result, arch) if not m.startswith(("zhang", "adi", "frontier"))]


def _robust(result: dict, arch: str) -> list[str]:
    """Every mark but the ablation rows: those that face transfer and overwriting."""
    return [m for m in _marks(result, arch) if not m.endswith("plain")]


def _get(result: dict, arch: str, name: str, *path) -> list[dict]:
    out = []
    for row in result["seeds"]:
        v = row["archs"][arch]["marks"][name]
        for k in path:
            v = v[k]
        out.append(v)
    return out


def _curve_table(result: dict, arch: str, names: list[str], attack: str, labels: list[str]) -> str:
    """One row before the attack, then one per step of ``attack`` (labelled by ``labels``); a column per mark."""
    body = [["none", *(_cell(_get(result, arch, n, "before")) for n in names)]]
    body += [[label, *(_cell(_get(result, arch, n, attack, idx)) for n in names)] for idx, label in enumerate(labels)]
    return table([attack, *names], body)


def _intro(result: dict) -> str:
    """Title, the run, the deviations from the paper, and how to read a cell."""
    p = result["params"]
    resnet = (f"ResNet-20 runs at width {p['width']['resnet20']} and {p['epochs']['resnet20']} epochs with only the "
              f"rows {', '.join(p['variants']['resnet20'])}, to fit ~40 minutes on one CPU core; "
              if "resnet20" in p["archs"] else "this quick run has no ResNet-20; ")
    return "\n\n".join([
        "# Function-coupled watermarks vs backdoor baselines (Wen et al. layout), mnist5k",
        f"Written by `{result['command']}` on {result['date']}; {len(result['seeds'])} seed(s); "
        f"torch {torch.__version__}. Parameters: `{p}`.",
        "Deviations from the paper: MNIST is mnist5k (4,000 training, 1,000 test images); the attacker fine-tunes "
        "on the 500 test images disjoint from every key (paper: 1,000-2,000); " + resnet
        + "the baselines run on LeNet-5 only; transfer goes to scikit-learn "
        "digits upsampled to 28 x 28 (paper: CIFAR-10 -> MNIST etc.); a fine-tuning 'trial' is one FTAL epoch "
        f"(SGD lr {p['ft_lr']}), a transfer trial one epoch (Adam lr 1e-4). Exponential weighting and Entangled "
        "watermarks are not implemented. Frontier stitching (FGSM eps 0.1, 45 true + 45 false adversaries, null "
        "p0 = 1/2 as in Le Merrer et al.) fine-tunes the clean model, so its 'on the clean model' cell is the model "
        "its key was made on (50% by construction); an independently trained model answers far more than half of "
        "its key right (see `nnmark.marks.ownership.frontier`).",
        "BatchNorm: `coupled.embed` trains with (W * M) / keep_ratio on batch statistics and re-estimates the "
        "running statistics with the full W over its training data at the end, so inference (the full W) sees "
        "statistics of the network it runs. LeNet-5 has no BatchNorm.",
        f"Trigger weight: each of the K_wm distinct triggers (under 1% of the training data) appears "
        f"{coupled.WM_REPEAT} times per epoch, for the coupled marks and Zhang's alike (Adi: as often as puts "
        f"{backdoor_wm.ADI_PER_BATCH} in a batch on average, `backdoor_wm.adi_repeat`).",
        "The null p0 is what the verifier tests against: max(chance, the suspect's rate of answering t on clean "
        "images, on plain images of the source classes); for Adi's random labels max(chance, the largest label "
        "share). A model broken into answering t everywhere has p0 near 100% and is not counted.",
        "Cells: authentication success % / null p0 % / one-sided binomial p-value, ✓ watermark found "
        "(success >= 50% and p < 1e-3) / clean test accuracy %.",
    ])


def _clean_accuracy(result: dict, arch: str) -> list[float]:
    return [r["archs"][arch]["clean_accuracy"] for r in result["seeds"]]


def effectiveness_table(result: dict, arch: str) -> str:
    """Table 2: each mark on its watermarked model and on the clean model, and the fidelity."""
    body = []
    for m in _marks(result, arch):
        before = _get(result, arch, m, "before")
        delta = statistics.mean(b["accuracy"] - c for b, c in zip(before, _clean_accuracy(result, arch)))
        body.append([m, _cell(before), _cell(_get(result, arch, m, "on_clean_model"), acc=False), f"{delta * 100:+.2f}"])
    return table(["watermark", "on the watermarked model", "on the clean model", "fidelity Δ (pp)"], body)


def transfer_table(result: dict, arch: str) -> str:
    """Fig. 7: each robust mark after each transfer trial, with the digits test accuracy in brackets."""
    enhanced = [m for m in _coupled_marks(result, arch) if not m.endswith("plain")]
    body = []
    for idx in range(result["params"]["transfer_trials"]):
        cells = []
        for m in enhanced:
            checks = _get(result, arch, m, "transfer", idx)
            cells.append(f"{_cell(checks)} [{statistics.mean(c['digits_accuracy'] for c in checks) * 100:.1f}]")
        body.append([idx + 1, *cells])
    return table(["trial", *enhanced], body)


def overwrite_table(result: dict, arch: str) -> str:
    """Table 3: the victim's mark and the attacker's after overwriting, and the attacker's on the victim."""
    body = []
    for m in _robust(result, arch):
        nc = _get(result, arch, m, "overwrite", "new_classes")[0]
        body.append([m, f"{nc['base'][0]}, {nc['base'][1]} -> {nc['target']}",
                     _cell(_get(result, arch, m, "overwrite", "original")),
                     _cell(_get(result, arch, m, "overwrite", "new"), acc=False),
                     _cell(_get(result, arch, m, "overwrite", "new_on_victim"), acc=False)])
    return table(["victim watermark", "new classes (i, j -> t)", "original after overwriting", "new after overwriting",
                  "new on the victim before"], body)


def _prune_index(p: dict) -> int:
    """The largest pruning ratio up to 0.8: Table 4's pruning column."""
    return max(i for i, f in enumerate(p["prune"]) if f <= 0.8)


def side_by_side_table(result: dict, arch: str) -> str:
    """Table 4: success before and after each attack, and the benign accuracy preserving rate."""
    body = []
    for m in _robust(result, arch):
        before = _get(result, arch, m, "before")
        keep = statistics.mean(b["accuracy"] / c for b, c in zip(before, _clean_accuracy(result, arch)))
        body.append([m, _cell(before), f"{keep * 100:.2f} %", _cell(_get(result, arch, m, "finetune", -1)),
                     _cell(_get(result, arch, m, "transfer", -1)),
                     _cell(_get(result, arch, m, "prune", _prune_index(result["params"]))),
                     _cell(_get(result, arch, m, "overwrite", "original"))])
    return table(["method", "before", "preserving rate", "fine-tuning", "transfer", "pruning", "overwriting"], body)


def _arch_section(result: dict, arch: str) -> str:
    """Every table of one architecture."""
    p = result["params"]
    coupled_marks = _coupled_marks(result, arch)
    digits = statistics.mean(r["archs"][arch]["clean_digits_accuracy"] for r in result["seeds"]) * 100
    return section(
        ARCH_NAMES[arch],
        f"Clean (unwatermarked) model: test accuracy {statistics.mean(_clean_accuracy(result, arch)) * 100:.2f} %.",
        section("Table 2: effectiveness and fidelity",
                "Each watermarked model checked with its own key, and the clean model checked with the same key "
                "(it must not pass); fidelity is the watermarked model's accuracy minus the clean model's.",
                effectiveness_table(result, arch), level=3),
        section("Fig. 5/6 and 10: success and accuracy vs fine-tuning trials",
                "Coupled variants with the robustness strategies, beside the plain (no masking, no training-time "
                "fine-tuning) ablation rows.",
                _curve_table(result, arch, coupled_marks, "finetune", [str(k) for k in range(1, p["ft_trials"] + 1)]),
                level=3),
        section("Fig. 8/9 and 11/12: success and accuracy vs pruning ratio",
                "L1-unstructured pruning of each layer, no fine-tuning afterwards; watch the null column: a pruned "
                "model that answers t for most inputs has a high p0.",
                _curve_table(result, arch, coupled_marks, "prune", [f"{f:g}" for f in p["prune"]]), level=3),
        section("Fig. 7: transfer learning to digits (28 x 28)",
                "Cells as above (accuracy on mnist5k); the digits test accuracy after each trial in brackets "
                f"(clean model before transfer: {digits:.1f} %).", transfer_table(result, arch), level=3),
        section("Table 3: overwriting",
                f"A second coupled watermark (other base classes and target, the victim's kind) trained in with the "
                f"attacker's images, {p['overwrite_epochs']} epochs at Adam lr 1e-4.", overwrite_table(result, arch),
                level=3),
        section("Table 4: all methods side by side",
                f"Success before any attack, after {p['ft_trials']} fine-tuning trials, after {p['transfer_trials']} "
                f"transfer epochs, after pruning {p['prune'][_prune_index(p)]:g} of each layer, and "
                "after overwriting; the 'benign accuracy preserving rate' is the watermarked model's accuracy over "
                "the clean model's.", side_by_side_table(result, arch), level=3),
    )


def render(result: dict) -> str:
    """The Markdown report of a run."""
    return document(_intro(result), *(_arch_section(result, arch) for arch in result["params"]["archs"]))


def success_panels(result: dict) -> list[list[dict]]:
    """The points of the figure: per architecture, success vs pruning ratio and vs fine-tuning trials, a line per
    mark (dashed: ablation), crosses where the mark was not found, and the first mark's clean accuracy."""
    p = result["params"]
    panels = []
    for arch in p["archs"]:
        row = []
        for attack, xs, xlabel in [("prune", list(p["prune"]), "pruning ratio"),
                                   ("finetune", list(range(1, p["ft_trials"] + 1)), "fine-tuning trials")]:
            lines = []
            for m in _marks(result, arch):
                checks = [_get(result, arch, m, attack, i) for i in range(len(xs))]
                succ = [statistics.mean(c["success"] for c in cs) * 100 for cs in checks]
                lost = [(x, y) for x, y, cs in zip(xs, succ, checks) if not all(c["passed"] for c in cs)]
                lines.append({"label": m, "y": succ, "dashed": m.endswith("plain"), "lost": lost})
            first = _marks(result, arch)[0]
            accuracy = [statistics.mean(c["accuracy"] for c in _get(result, arch, first, attack, i)) * 100
                        for i in range(len(xs))]
            row.append({"title": f"{ARCH_NAMES[arch]}: success vs {xlabel} (x: not found)", "xlabel": xlabel,
                        "x": xs, "lines": lines, "accuracy": {"label": f"clean accuracy ({first})", "y": accuracy}})
        panels.append(row)
    return panels


def figure(result: dict) -> bytes:
    """coupled.png: success (solid; dashed: ablation) and clean accuracy (dotted) vs pruning ratio and fine-tuning
    trials; a cross where the watermark is not found (success < 50% or p >= 1e-3 against the null p0)."""
    return plots.success_curves(success_panels(result))


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False) -> Path:
    """Run the benchmark and write ``coupled.md``, ``coupled.json`` and ``coupled.png`` to ``out_dir``."""
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    ds = data.load("mnist5k")
    digits = data.load_for("digits", models.ModelCard(ds.shape, ds.num_classes))  # upsampled to 28 x 28
    rows = []
    for seed in range(p["seeds"]):
        rows.append({"seed": seed, "archs": {a: run_arch(a, seed, p, ds, digits, progress) for a in p["archs"]}})
    result = {**header(NAME, p, quick=quick, seeds=seeds), "seeds": rows}
    return write(out_dir, STEM, result, render(result), figure(result))
