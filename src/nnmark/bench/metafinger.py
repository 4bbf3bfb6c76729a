"""``nnmark bench ownership-fingerprint``: MetaFinger's evaluation layout (Yang et al., IJCAI 2022) on mnist5k.

For each seed: a LeNet-5 source; MetaFinger shadow pools (``nnmark.marks.ownership.shadow``, process
executor, one worker, cached under its ``default_cache_dir()``) of LeNet-5 (positives: eq. 1
augmentations of the source; negatives: from-scratch families with their augmentations, and
independent validation models) and of a second architecture (VGG-11 negatives and one VGG-11
validation negative); four keys from the source: MetaFinger (meta-trained with input augmentation,
``metafinger.create``'s default), the same without it (``augment_inputs=False``, side by side: the
measurement behind that default), IPGuard (boundary points from training images) and natural test
images labelled by the source (the sanity baseline). Then:

- Fig. 3 layout: query accuracy of each key on the source after FTLL/FTAL/RTLL/RTAL, after pruning
  p = 10..70% per layer with fine-tuning, and after eq. 1 weight noise at several alpha with
  fine-tuning (all on the attacker's data, ``nnmark.data.roles.attacker_data``, disjoint from the
  owner's training images), beside the attacked model's test accuracy;
- Fig. 5 layout: query accuracy of the source behind each input transform of
  ``nnmark.attacks.TRANSFORMS`` at two strengths, beside its test accuracy under the transform;
- Table 1 layout: query accuracy, decision and p-value on independently trained clean LeNet-5,
  ResNet-20 and VGG-11 models in no pool (the false-positive side);
- Fig. 7 layout: query-accuracy difference (mean over the Fig. 3 attacked models minus mean over
  the Table 1 clean models) of MetaFinger keys made with LeNet-5 pools of 1, 2, 4, 6 negative
  families at AF 4, and of 6 families at AF 0..4 (subsets of the main pool: no extra training);
- cost: training seconds of the shadow models (each model's time as recorded in the cache when it
  was trained) and wall time of meta-training, for the pool of each Fig. 7 setting.

Test accuracy is measured on ``nnmark.data.roles.natural_pool`` (the first half of the test split;
the attacker holds the second half). Deviations from the paper, which trains ResNet/VGG pools on
CIFAR-10 and Tiny-ImageNet on GPUs: one data set (mnist5k, 4,000 training images), pools of a
few models (full mode: 6 LeNet-5 families with AF 4 and 2 VGG-11 families with AF 2, where the
paper's Fig. 7 goes to 15 negatives and AF 5; 6 families at AF 4 gave more screened queries, higher
query accuracy under attack and lower accuracy on clean models than the earlier 4 families at AF 3
in a side-by-side run on seed 0), VGG-11 trained 2 epochs and ResNet-20 2 epochs (on one CPU core a
ResNet-20 epoch takes ~30 s), and 2 seeds in full mode, so that the full run fits in about 40
minutes of one core with an empty shadow cache (each seed trains ~60 models, ~11 minutes).
"""

from __future__ import annotations

import inspect
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark.attacks import MODES, TRANSFORMS, finetune_mode, prune_finetune, relative_weight_noise
from nnmark.bench import plots
from nnmark.bench.common import document, header, mean_std, parameters, section, table, write
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.errors import NnmarkError
from nnmark.keys import KeyFile
from nnmark.marks.integrity import baselines
from nnmark.marks.ownership import ipguard, metafinger, shadow
from nnmark.marks.ownership.shadow import ShadowSpec
from nnmark.oracles import LabelsOracle, Oracle, TorchOracle
from nnmark.oracles.transformed import TransformedOracle

STEM = "metafinger"
DATA = "mnist5k"
PLAIN = "MetaFinger (no input aug.)"
METHODS = ("MetaFinger", PLAIN, "IPGuard", "Natural")
"""The keys compared; ``PLAIN`` is MetaFinger meta-trained on X itself (``augment_inputs=False``)."""
DECIDING = ("MetaFinger", PLAIN, "IPGuard")
"""The methods with a decision rule and p-value (Natural has none)."""
FULL = {
    "seeds": 2, "n": 100, "source_epochs": 8, "shadow_epochs": 8, "finetune_epochs": 2, "alpha": 3.0,
    "negatives": 6, "val_negatives": 2, "af": 4, "second_arch": "vgg11", "second_epochs": 2, "second_negatives": 2,
    "second_val_negatives": 1, "second_af": 2, "meta_epochs": 10, "ipguard_iterations": 1000,
    "attack_epochs": 10, "prune": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), "noise_alphas": (10.0, 5.0, 3.0, 2.0, 1.0),
    "clean": {"lenet5": (3, 8), "resnet20": (2, 2), "vgg11": (2, 2)},
    "fig7_negatives": (1, 2, 4, 6), "fig7_af": (0, 1, 2, 3, 4),
}
QUICK = {
    "seeds": 1, "n": 30, "source_epochs": 2, "shadow_epochs": 1, "finetune_epochs": 1, "alpha": 3.0,
    "negatives": 2, "val_negatives": 2, "af": 2, "second_arch": "vgg11", "second_epochs": 1, "second_negatives": 1,
    "second_val_negatives": 1, "second_af": 1, "meta_epochs": 30, "ipguard_iterations": 300,
    "attack_epochs": 2, "prune": (0.1, 0.7), "noise_alphas": (5.0, 1.0),
    "clean": {"lenet5": (1, 1), "vgg11": (1, 1)},
    "fig7_negatives": (1, 2), "fig7_af": (0, 2),
}
TRANSFORM_STRENGTHS = {
    "resize_pad": [{"max_shrink": 0.1}, {"max_shrink": 0.25}],
    "gaussian_noise": [{"std": 0.05}, {"std": 0.1}],
    "uniform_noise": [{"eps": 0.05}, {"eps": 0.1}],
    "universal_noise": [{"eps": 0.05}, {"eps": 0.1}],
    "mean_smoothing": [{"k": 3}, {"k": 5}],
    "median_smoothing": [{"k": 3}, {"k": 5}],
    "gaussian_smoothing": [{"k": 3, "sigma": 0.8}, {"k": 5, "sigma": 1.5}],
}
"""Each ``TRANSFORMS`` entry at a mild and a strong setting (MetaFinger's release uses the mild ones)."""


# --- pools -------------------------------------------------------------------------------------------------


def _specs(p: dict, seed: int, digest: str) -> tuple[dict[str, list[ShadowSpec]], dict[str, list[ShadowSpec]]]:
    """(LeNet-5 pools by ``metafinger.POOLS``, second-architecture negatives "negatives_train"/"negatives_val")."""
    common = {"alpha": p["alpha"], "finetune_epochs": p["finetune_epochs"]}
    lenet = shadow.pool_specs("lenet5", DATA, digest, shadow.PoolLayout(
        negatives=p["negatives"], val_negatives=p["val_negatives"], af=p["af"], epochs=p["shadow_epochs"], **common,
    ), seed=100 * seed)
    second = shadow.pool_specs(p["second_arch"], DATA, digest, shadow.PoolLayout(
        negatives=p["second_negatives"], val_negatives=p["second_val_negatives"], af=p["second_af"],
        epochs=p["second_epochs"], **common,
    ), seed=100 * seed + 10)
    return lenet, {g: second[g] for g in ("negatives_train", "negatives_val")}


def _clean_specs(p: dict, seed: int) -> dict[str, list[ShadowSpec]]:
    """Independently trained models in no pool: per architecture, (count, epochs) from ``p["clean"]``."""
    offsets = {"lenet5": 20, "resnet20": 30, "vgg11": 40}
    return {arch: [ShadowSpec(arch, DATA, 100 * seed + offsets[arch] + i, epochs=epochs) for i in range(count)]
            for arch, (count, epochs) in p["clean"].items()}


def subset_pools(lenet: dict[str, list[ShadowSpec]], negatives: int, af: int) -> dict[str, list[ShadowSpec]]:
    """The LeNet-5 pools with only the first ``negatives`` families and ``af`` augmentations per model (Fig. 7).

    Positives: the source's augmentations with augment_seed < af, split into train and validation as
    ``shadow.pool_specs`` does (a third, rounded, validate). The validation negatives stay the same.
    """
    families = sorted({s.seed for s in lenet["negatives_train"]})[:negatives]
    positives = sorted((s for s in lenet["positives_train"] + lenet["positives_val"] if s.augment_seed < af),
                       key=lambda s: s.augment_seed)
    n_val = round(af / 3)
    neg = [s for s in lenet["negatives_train"]
           if s.seed in families and (not s.augmented or s.augment_seed % 1000 < af)]
    return {"positives_train": positives[: af - n_val], "negatives_train": neg,
            "positives_val": positives[af - n_val:], "negatives_val": lenet["negatives_val"]}


def _flat(groups: dict[str, list[ShadowSpec]]) -> list[ShadowSpec]:
    """The specs of every group, in group order."""
    return [s for g in groups.values() for s in g]


def _training_seconds(pool: shadow.ShadowPool, specs: list[ShadowSpec]) -> float:
    """Sum of the training times recorded in the cache for ``specs`` (when each was built)."""
    index = dict(zip(pool.specs, pool.paths))
    return sum(json.loads(index[s].with_suffix(".json").read_text())["seconds"] for s in dict.fromkeys(specs))


# --- keys and suspects ----------------------------------------------------------------------------------------


def query_accuracy(suspect: Oracle, key: KeyFile) -> dict:
    """The suspect's query accuracy on a key, with the method's decision and p-value where it has them."""
    if key.method == metafinger.METHOD:
        v = metafinger.verify(suspect, key)
    elif key.method == ipguard.METHOD:
        v = ipguard.verify(suspect, key)
    else:
        agree = (suspect.labels(key.queries) == key.expected).double().mean().item()
        return {"accuracy": agree, "passed": None, "p_value": None}
    return {"accuracy": v.statistic, "passed": v.passed, "p_value": v.details["p_value"]}


def _settings(p: dict, **changes) -> metafinger.Settings:
    """MetaFinger's settings in this run: ``p``'s n and meta-training epochs, the module's other defaults."""
    return metafinger.Settings(n=p["n"], epochs=p["meta_epochs"], **changes)


def _metafinger_key(source, pools: dict[str, list], ds: data.Dataset, settings: metafinger.Settings,
                    seed: int) -> tuple[KeyFile, float]:
    start = time.perf_counter()
    key = metafinger.create(source, metafinger.Pools(**pools), ds.train.x, settings, seed=seed)
    return key, time.perf_counter() - start


def _keys(source, pools: dict[str, list], ds: data.Dataset, p: dict, seed: int) -> tuple[dict[str, KeyFile], dict]:
    oracle = TorchOracle(source, ds.shape, ds.num_classes)
    gen = torch.Generator().manual_seed(seed)
    mf, mf_seconds = _metafinger_key(source, pools, ds, _settings(p), seed)
    plain, plain_seconds = _metafinger_key(source, pools, ds, _settings(p, augment_inputs=False), seed)
    start = time.perf_counter()
    ipg = ipguard.create(oracle, ds.train.x[torch.randperm(len(ds.train), generator=gen)[: p["n"]]],
                         iterations=p["ipguard_iterations"], seed=seed)
    ipg_seconds = time.perf_counter() - start
    pool = natural_pool(ds)
    nat = baselines.natural(oracle, pool.x[torch.randperm(len(pool), generator=gen)[: p["n"]]])
    info = {m: {"n": len(k.expected), "screened": k.config["screened"], "p0": k.config["p0"],
                "best_epoch": k.config["best_epoch"], "seconds": t}
            for m, k, t in (("MetaFinger", mf, mf_seconds), (PLAIN, plain, plain_seconds))}
    info["IPGuard"] = {"n": len(ipg.expected), "converged": ipg.config["converged"], "seconds": ipg_seconds}
    info["Natural"] = {"n": len(nat.expected)}
    return {"MetaFinger": mf, PLAIN: plain, "IPGuard": ipg, "Natural": nat}, info


def _model_attacks(source, ds: data.Dataset, p: dict, seed: int) -> dict[str, torch.nn.Module]:
    """Fig. 3's modified models, by name: fine-tune modes, prune + fine-tune, eq. 1 noise + fine-tune (FTAL)."""
    atk = attacker_data(ds)
    kw = {"epochs": p["attack_epochs"], "seed": seed}
    out = {mode: finetune_mode(source, atk.x, atk.y, mode=mode, **kw) for mode in MODES}
    out.update({f"prune {f:.0%}": prune_finetune(source, atk.x, atk.y, fraction=f, **kw) for f in p["prune"]})
    out.update({f"noise alpha={a:g}": finetune_mode(relative_weight_noise(source, a, seed=seed), atk.x, atk.y,
                                                    mode="FTAL", **kw) for a in p["noise_alphas"]})
    return out


def _row(suspect: Oracle, keys: dict[str, KeyFile], accuracy: float) -> dict:
    return {"test_accuracy": accuracy, **{m: query_accuracy(suspect, k) for m, k in keys.items()}}


def _transformed_accuracy(model, transform, split: data.Split) -> float:
    with torch.no_grad():
        return (model(transform(split.x)).argmax(dim=1) == split.y).double().mean().item()


def _fig7(lenet_specs: dict, pool: shadow.ShadowPool, source, ds: data.Dataset, p: dict, seed: int,
          held_pos: list, held_neg: list) -> list[dict]:
    """MetaFinger keys from sub-pools; query-accuracy difference of held-out positives minus negatives, and costs."""
    settings = [(n, p["af"]) for n in p["fig7_negatives"]] + [(p["negatives"], af) for af in p["fig7_af"]]
    rows = []
    for negatives, af in dict.fromkeys(settings):
        specs = subset_pools(lenet_specs, negatives, af)
        try:
            key, seconds = _metafinger_key(source, pool.groups(specs), ds, _settings(p), seed)
        except NnmarkError:
            rows.append({"negatives": negatives, "af": af, "kept": 0, "difference": None, "meta_seconds": None,
                         "shadow_models": sum(len(s) for s in specs.values()),
                         "shadow_seconds": _training_seconds(pool, _flat(specs))})
            continue
        pos = [query_accuracy(LabelsOracle(TorchOracle(m, ds.shape)), key)["accuracy"] for m in held_pos]
        neg = [query_accuracy(LabelsOracle(TorchOracle(m, ds.shape)), key)["accuracy"] for m in held_neg]
        rows.append({"negatives": negatives, "af": af, "kept": len(key.expected), "positive": statistics.mean(pos),
                     "negative": statistics.mean(neg), "difference": statistics.mean(pos) - statistics.mean(neg),
                     "meta_seconds": seconds, "shadow_models": sum(len(s) for s in specs.values()),
                     "shadow_seconds": _training_seconds(pool, _flat(specs))})
    return rows


def _fig5(source, keys: dict[str, KeyFile], ds: data.Dataset, seed: int) -> dict[str, dict]:
    """Fig. 5's rows: the source behind each transform of ``TRANSFORM_STRENGTHS``, by "name k=v"."""
    test = natural_pool(ds)
    out = {}
    for name, strengths in TRANSFORM_STRENGTHS.items():
        for kwargs in strengths:
            label = f"{name} " + ", ".join(f"{k}={v:g}" for k, v in kwargs.items())
            seeded = "seed" in inspect.signature(TRANSFORMS[name]).parameters
            transform = TRANSFORMS[name](**kwargs, **({"seed": seed} if seeded else {}))
            oracle = TransformedOracle(TorchOracle(source, ds.shape), transform)
            out[label] = _row(oracle, keys, _transformed_accuracy(source, oracle.transform, test))
    return out


def _cost(pool: shadow.ShadowPool, lenet: dict[str, list[ShadowSpec]], second: dict[str, list[ShadowSpec]],
          key_info: dict) -> dict:
    """Shadow models and their recorded training seconds (all, LeNet-5, second architecture), this run's build
    wall time, and the keys' creation seconds."""
    all_pool = _flat(lenet) + _flat(second)
    return {"pool_models": len(dict.fromkeys(all_pool)), "pool_training_seconds": _training_seconds(pool, all_pool),
            "lenet_models": len(dict.fromkeys(_flat(lenet))),
            "lenet_training_seconds": _training_seconds(pool, _flat(lenet)),
            "second_models": len(dict.fromkeys(_flat(second))),
            "second_training_seconds": _training_seconds(pool, _flat(second)),
            "build_wall_seconds": pool.seconds, "trained_this_run": len(pool.trained),
            "meta_training_seconds": key_info["MetaFinger"]["seconds"],
            "meta_training_plain_seconds": key_info[PLAIN]["seconds"],
            "ipguard_seconds": key_info["IPGuard"]["seconds"]}


def run_seed(seed: int, p: dict, ds: data.Dataset, progress: bool) -> dict:
    """One seed: source, pools, keys, Fig. 3 / Fig. 5 / Table 1 / Fig. 7 rows and costs."""
    cache = shadow.default_cache_dir()
    build = {"cache_dir": cache, "workers": 1, "executor": "process", "progress": progress}
    source_spec = ShadowSpec("lenet5", DATA, 100 * seed, epochs=p["source_epochs"])
    source = shadow.build_pool([source_spec], **build)[0]
    digest = models.digest(source)
    lenet, second = _specs(p, seed, digest)
    clean = _clean_specs(p, seed)
    pool = shadow.build_pool(_flat(lenet) + _flat(second) + _flat(clean), base=source, **build)
    pools = {g: pool.select(lenet[g]) + (pool.select(second[g]) if g in second else []) for g in metafinger.POOLS}
    keys, key_info = _keys(source, pools, ds, p, seed)
    test = natural_pool(ds)

    attacked = _model_attacks(source, ds, p, seed)
    fig3 = {name: _row(LabelsOracle(TorchOracle(m, ds.shape)), keys, models.accuracy(m, test))
            for name, m in tqdm(attacked.items(), desc="model attacks", disable=not progress, leave=False)}
    fig3 = {"none": _row(LabelsOracle(TorchOracle(source, ds.shape)), keys, models.accuracy(source, test)), **fig3}
    fig5 = _fig5(source, keys, ds, seed)
    clean_models = {f"{arch} #{i + 1}": m for arch, specs in clean.items() for i, m in enumerate(pool.select(specs))}
    table1 = {name: _row(LabelsOracle(TorchOracle(m, ds.shape)), keys, models.accuracy(m, test))
              for name, m in clean_models.items()}
    fig7 = _fig7(lenet, pool, source, ds, p, seed, list(attacked.values()), list(clean_models.values()))
    cost = _cost(pool, lenet, second, key_info)
    return {"seed": seed, "source_accuracy": models.accuracy(source, test), "keys": key_info,
            "pools": {g: len(v) for g, v in pools.items()}, "fig3": fig3, "fig5": fig5, "table1": table1,
            "fig7": fig7, "cost": cost}


# --- report -------------------------------------------------------------------------------------------------


CLEAN = (
    "Independently trained models in no shadow pool. Low query accuracy means no false claim of ownership; the "
    "p-value (largest over seeds) is MetaFinger's binomial tail under its calibrated null p0 and IPGuard's under "
    "chance 1/10; 'match' counts the seeds where the method's rule would (falsely) claim the model.")
"""How to read the Table 1 layout."""
FIG7 = (
    "MetaFinger keys from LeNet-5 sub-pools. Difference = mean query accuracy of the Fig. 3 attacked models minus "
    "that of the Table 1 clean models (percentage points); the paper reaches 93 points with 6 negatives at AF 5 and "
    "finds AF 0 poor even with 15 negatives. Shadow models counts the pool (source excluded); their training time "
    "is each model's recorded build time; meta-training is this run's wall time.")
"""How to read the Fig. 7 layout."""
COST = (
    "Meta-data generation (shadow-model training, one worker process, one core) against meta-training (Algorithm "
    "1, the main key) and IPGuard's boundary search. Training seconds are each model's recorded build time (a "
    "cached model keeps the time of the run that built it); the build wall time is this run's.")
"""How to read the cost table."""
SCALING = (
    "Scaling with the number of shadow models: the Fig. 7 table's last two columns (training time grows linearly "
    "with the models; meta-training grows with the anchors, i.e. with AF, not with the negatives, since each step "
    "draws k = 3 of them).")
"""What the cost says about larger pools."""


def _pct(values: list[float]) -> str:
    return mean_std(values, 100)


def _mean(values: list[float], digits: int) -> str:
    """'m ± s' of counts or seconds, with ``digits`` decimals."""
    return mean_std(values, 1, digits)


def _pvalue(values: list[float | None]) -> str:
    return "n/a" if any(v is None for v in values) else f"{max(values):.2g}"


def query_table(rows: list[dict], part: str, names: list[str], first: str) -> str:
    """Fig. 3 / Fig. 5 layout: per attack or transform, test accuracy and each key's query accuracy (%)."""
    return table([first, "test accuracy", *METHODS], [
        [name, _pct([r[part][name]["test_accuracy"] for r in rows]),
         *(_pct([r[part][name][m]["accuracy"] for r in rows]) for m in METHODS)] for name in names])


def clean_table(rows: list[dict]) -> str:
    """Table 1 layout: per clean model, test accuracy, each deciding key's query accuracy, p-value and matches."""
    out = []
    for name in rows[0]["table1"]:
        cells = [name, _pct([r["table1"][name]["test_accuracy"] for r in rows])]
        for m in DECIDING:
            vals = [r["table1"][name][m] for r in rows]
            cells += [_pct([v["accuracy"] for v in vals]), _pvalue([v["p_value"] for v in vals]),
                      f"{sum(bool(v['passed']) for v in vals)}/{len(vals)}"]
        out.append([*cells, _pct([r["table1"][name]["Natural"]["accuracy"] for r in rows])])
    headers = ["model", "test accuracy", *(c for m in DECIDING for c in (m, "p-value", "match")), "Natural"]
    return table(headers, out)


def fig7_table(rows: list[dict]) -> str:
    """Fig. 7 layout: per sub-pool, its size, kept queries, query accuracies and difference, and costs."""
    out = []
    for i, f in enumerate(rows[0]["fig7"]):
        vals = [r["fig7"][i] for r in rows]
        if any(v["difference"] is None for v in vals):
            out.append([f["negatives"], f["af"], f["shadow_models"], 0, "-", "-", "no key",
                        f"{f['shadow_seconds']:.0f} s", "-"])
            continue
        out.append([f["negatives"], f["af"], f["shadow_models"], _mean([v["kept"] for v in vals], 0),
                    *(_pct([v[k] for v in vals]) for k in ("positive", "negative", "difference")),
                    f"{_mean([v['shadow_seconds'] for v in vals], 0)} s",
                    f"{_mean([v['meta_seconds'] for v in vals], 1)} s"])
    return table(["negative families", "AF", "shadow models", "kept queries", "positives", "negatives", "difference",
                  "shadow training", "meta-training"], out)


def cost_table(rows: list[dict], p: dict) -> str:
    """Shadow-model training against meta-training and IPGuard's boundary search (seconds)."""
    c = [r["cost"] for r in rows]

    def cost(name: str, digits: int) -> str:
        return _mean([x[name] for x in c], digits)

    return table(["part", "models", "seconds"], [
        ["LeNet-5 pool training", c[0]["lenet_models"], cost("lenet_training_seconds", 0)],
        [f"{p['second_arch']} pool training", c[0]["second_models"], cost("second_training_seconds", 0)],
        [f"build_pool wall time this run ({sum(x['trained_this_run'] for x in c)} models trained)",
         f"{c[0]['pool_models']} + clean", cost("build_wall_seconds", 0)],
        ["MetaFinger meta-training + screening", "-", cost("meta_training_seconds", 1)],
        ["the same without input augmentation", "-", cost("meta_training_plain_seconds", 1)],
        ["IPGuard boundary search", "-", cost("ipguard_seconds", 1)],
    ])


def _setup(result: dict) -> str:
    """The run's pools and keys (seed 0), and where the deviations from the paper are listed."""
    r0, p = result["seeds"][0], result["params"]
    mf, plain = r0["keys"]["MetaFinger"], r0["keys"][PLAIN]
    return (
        f"Pools (seed 0): {r0['pools']} models (MetaFinger adds the source to both positive pools); LeNet-5 "
        f"families {p['negatives']} with AF {p['af']}, {p['second_arch']} families {p['second_negatives']} with AF "
        f"{p['second_af']}; eq. 1 alpha {p['alpha']:g}. Keys (seed 0): MetaFinger {mf['n']} queries "
        f"({mf['screened']} passed the screen, null p0 = {mf['p0']:.3f}; without input augmentation {plain['n']} "
        f"queries, p0 = {plain['p0']:.3f}), IPGuard {r0['keys']['IPGuard']['n']} boundary points "
        f"(k = {ipguard.DEFAULT_K:g}, {r0['keys']['IPGuard']['converged']} converged), "
        f"Natural {r0['keys']['Natural']['n']} test images labelled by the source. Deviations from the paper: see "
        "the module docstring of `nnmark.bench.metafinger` (one small data set, small pools, short training of the "
        "larger architectures).")


def _model_section(rows: list[dict]) -> str:
    fig3 = list(rows[0]["fig3"])
    return section(
        "Model modification (Fig. 3 layout)",
        "(a) Fine-tuning modes on the attacker's data. A key that stays near 100% identifies the stolen model after "
        "the attack; the test accuracy shows the attacker kept a useful model.",
        query_table(rows, "fig3", ["none", *MODES], "attack"),
        "(b) Pruning p% of each layer's weights by magnitude, then fine-tuning with the mask kept.",
        query_table(rows, "fig3", [n for n in fig3 if n.startswith("prune")], "attack"),
        "(c) Eq. 1 weight noise std(param)/alpha (smaller alpha: more noise), then FTAL fine-tuning.",
        query_table(rows, "fig3", [n for n in fig3 if n.startswith("noise")], "attack"))


def render(result: dict) -> str:
    """metafinger.md: the setup, then the Fig. 3, Fig. 5, Table 1 and Fig. 7 layouts and the cost."""
    rows, p = result["seeds"], result["params"]
    return document(
        "# Ownership fingerprints: MetaFinger vs IPGuard (Yang et al. layout), mnist5k, LeNet-5 source",
        f"Written by `{result['command']}` on {result['date']}; {len(rows)} seed(s); torch {torch.__version__}. "
        "Query accuracy in % (the share of a key's queries the suspect labels as expected), mean ± std over seeds. "
        "Test accuracy on the first half of the test split; the attacker fine-tunes on the second half.",
        f"Parameters: `{json.dumps(p)}`.",
        _setup(result),
        _model_section(rows),
        section("Input modification (Fig. 5 layout)",
                "The unmodified source behind a preprocessing of every query. Test accuracy is the source's "
                "accuracy under the same preprocessing.",
                query_table(rows, "fig5", list(rows[0]["fig5"]), "transform")),
        section("Clean models (Table 1 layout)", CLEAN, clean_table(rows)),
        section("Negative models and augmentation (Fig. 7 layout)", FIG7, fig7_table(rows)),
        section("Cost", COST, cost_table(rows, p)),
        SCALING,
        f"![Fig. 3 and Fig. 7 panels]({STEM}.png)",
    )


def _mean_accuracy(rows: list[dict], part: str, name: str, m: str) -> float:
    """Seed mean of a key's (or with ``m`` None, the model's test) accuracy, in %."""
    return 100 * statistics.mean(r[part][name][m]["accuracy"] if m else r[part][name]["test_accuracy"] for r in rows)


def _curve(rows: list[dict], prefix: str, title: str) -> dict:
    """A Fig. 3 line panel: the attacks named ``prefix`` ..., each key's query accuracy and the test accuracy."""
    names = [n for n in rows[0]["fig3"] if n.startswith(prefix)]
    return {"title": title, "x": [n.split(" ", 1)[1] for n in names],
            "keys": {m: [_mean_accuracy(rows, "fig3", n, m) for n in names] for m in METHODS},
            "accuracy": [_mean_accuracy(rows, "fig3", n, None) for n in names]}


def _difference(result: dict, varied: str, fixed: str, title: str) -> dict:
    """A Fig. 7 panel: the query-accuracy difference (pp) against ``varied``, at the run's ``fixed`` setting,
    over the sub-pools that gave a key in every seed."""
    rows, value = result["seeds"], result["params"][fixed]
    fig7 = rows[0]["fig7"]
    idx = sorted((i for i, f in enumerate(fig7) if f[fixed] == value
                  and all(r["fig7"][i]["difference"] is not None for r in rows)), key=lambda i: fig7[i][varied])
    return {"title": f"{title} ({fixed} = {value})", "xlabel": varied, "x": [fig7[i][varied] for i in idx],
            "y": [100 * statistics.mean(r["fig7"][i]["difference"] for r in rows) for i in idx]}


def figure(result: dict) -> bytes:
    """metafinger.png: Fig. 3 (a) fine-tuning, (b) pruning, (c) noise; Fig. 7 (d) vs negatives, (e) vs AF
    (seed means)."""
    rows = result["seeds"]
    bars = {"title": "(a) fine-tuning", "x": list(MODES),
            "keys": {m: [_mean_accuracy(rows, "fig3", a, m) for a in MODES] for m in METHODS}}
    curves = [_curve(rows, "prune", "(b) pruning + fine-tuning"),
              _curve(rows, "noise", "(c) weight noise + fine-tuning")]
    differences = [_difference(result, "negatives", "af", "(d) vs negative families"),
                   _difference(result, "af", "negatives", "(e) vs augmentation factor")]
    return plots.fingerprint_panels(bars, curves, differences)


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False) -> Path:
    """Run the benchmark and write ``metafinger.md``, ``.json`` and ``.png`` to ``out_dir``."""
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    ds = data.load(DATA)
    start = time.perf_counter()
    rows = [run_seed(s, p, ds, progress) for s in tqdm(range(p["seeds"]), desc="seeds", disable=not progress)]
    result = {
        **header("ownership-fingerprint", p, quick=quick, seeds=seeds),
        "seeds": rows,
        "wall_seconds": time.perf_counter() - start,
    }
    return write(out_dir, STEM, result, render(result), figure(result))
