"""``nnmark bench dbi``: Yin et al.'s Tables 4 and 8 layout on mnist5k with LeNet-5, or with any model.

For each seed: train a LeNet-5 (with ``model``: a fresh model of that source's architecture, on ``data_spec``;
``bench.subject`` says what that means and which sources are refused), make DBI, natural ("non-fragile") and
random keys, apply SGD fine-tuning (lr 1e-3 / 1e-4 / 1e-5, 100 rounds; one round = one SGD step on a minibatch of 64
attacker images) and weight noise (std 1e-3 / 5e-4 / 1e-4), and record each key's ChangeRate.
Also: PSNR/SSIM and flatness of the DBI samples along the iterations (the paper's Fig. 5), false
alarms of the untouched model in other execution environments, and the generation time of the
batched implementation against one sample at a time. A foreign model's results go to ``dbi-NAME.md`` (and .json),
next to the zoo's ``dbi.md``, and say which model they are for.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nnmark import data, envs, models
from nnmark.attacks import finetune, weight_noise
from nnmark.bench import subject
from nnmark.bench.common import ARCH_NAMES, document, header, mean_std, parameters, section, table, write
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.marks.integrity import baselines, dbi
from nnmark.metrics import change_rate, sample_quality
from nnmark.oracles import TorchOracle

FULL = {"seeds": 3, "n": 100, "itr": 10_000, "checkpoints": (1000, 2000, 5000, 10_000), "epochs": 8,
        "natural": 500, "timing_n": 100, "timing_itr": 1000}
QUICK = {"seeds": 1, "n": 20, "itr": 200, "checkpoints": (100, 200), "epochs": 3,
         "natural": 100, "timing_n": 10, "timing_itr": 20}
FINETUNE_LRS = (1e-3, 1e-4, 1e-5)
FINETUNE_ROUNDS = 100
NOISE_STDS = (1e-3, 5e-4, 1e-4)
FALSE_ALARM_ENVS = ("float64", "mkldnn-off", "batch1")
ZOO_ARCH, ZOO_DATA, ZOO_SHAPE = "lenet5", "mnist5k", (1, 28, 28)


def _attacks(model: torch.nn.Module, ds: data.Dataset, seed: int) -> dict[str, torch.nn.Module]:
    atk = attacker_data(ds)
    out = {f"finetune lr={lr:g}": finetune(model, atk.x, atk.y, lr=lr, steps=FINETUNE_ROUNDS, seed=seed)
           for lr in FINETUNE_LRS}
    out.update({f"noise std={s:g}": weight_noise(model, s, seed=seed) for s in NOISE_STDS})
    return out


def run_seed(seed: int, p: dict, ds: data.Dataset, build: subject.Builder, progress: bool) -> dict:
    """One seed: model (from ``build``), keys, attacks, ChangeRates, quality trace and false alarms."""
    torch.manual_seed(seed)
    model = build(ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=p["epochs"], seed=seed)
    oracle = TorchOracle(model, ds.shape, ds.num_classes)
    idx = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(seed))[: p["n"]]
    sources = ds.train.x[idx]
    attacked = {name: TorchOracle(m, ds.shape) for name, m in _attacks(model, ds, seed).items()}

    trace, x, done = [], sources, 0
    eps = dbi.default_eps(ds.shape)
    for stop in p["checkpoints"]:
        x, loss = dbi.fragilize(oracle, x, eps, stop - done, progress=progress)
        done = stop
        labels = oracle.labels(x)
        trace.append({"itr": stop, "D": loss.mean().item(), "max_p": oracle.probabilities(x).max(1).values.mean().item(),
                      **sample_quality(x, sources),
                      **{name: change_rate(labels, o.labels(x)) for name, o in attacked.items()}})
    query_sets = {
        "DBI": x,
        "non-fragile": natural_pool(ds).x[: p["natural"]],
        "random": baselines.random_noise(oracle, p["n"], seed=seed).queries,
    }
    rates = {}
    for method, q in query_sets.items():
        expected = oracle.labels(q)
        rates[method] = {name: change_rate(expected, o.labels(q)) for name, o in attacked.items()}
    false_alarms = {e: int((envs.get(e).oracle(model, ds.shape).labels(x) != oracle.labels(x)).sum())
                    for e in FALSE_ALARM_ENVS}
    return {
        "seed": seed,
        "accuracy": models.accuracy(model, ds.test),
        "attacked_accuracy": {name: models.accuracy(o.model, ds.test) for name, o in attacked.items()},
        "change_rate": rates,
        "trace": trace,
        "false_alarms": false_alarms,
    }


def time_generation(p: dict, ds: data.Dataset, build: subject.Builder) -> dict:
    """Seconds for timing_n samples x timing_itr iterations: one batch vs one sample at a time."""
    model = build(ds.shape, ds.num_classes).eval()
    oracle = TorchOracle(model, ds.shape, ds.num_classes)
    x = ds.train.x[: p["timing_n"]]
    start = time.perf_counter()
    dbi.fragilize(oracle, x, 1e-4, p["timing_itr"])
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(len(x)):
        dbi.fragilize(oracle, x[i : i + 1], 1e-4, p["timing_itr"])
    single = time.perf_counter() - start
    return {"n": len(x), "itr": p["timing_itr"], "batched_s": batched, "one_at_a_time_s": single,
            "ratio": single / batched, "threads": torch.get_num_threads()}


def _intro(result: dict) -> str:
    """Title, the run's settings and the model's accuracy."""
    rows, p, model = result["seeds"], result["params"], result.get("model")
    data_name, model_name = (model["data"], model["name"]) if model else (ZOO_DATA, ARCH_NAMES[ZOO_ARCH])
    shape = tuple(model["card"]["input_shape"]) if model else ZOO_SHAPE
    eps = f"{dbi.default_eps(shape):.0e}".replace("e-0", "e-") + (
        f" (nnmark's default for {shape[0]}-channel input)" if model else "")
    return "\n\n".join([
        f"# DBI benchmark (Yin et al.), {data_name}, {model_name}",
        f"Written by `{result['command']}` on {result['date']}; {len(rows)} seed(s); torch {torch.__version__}, "
        f"{result['timing']['threads']} threads. Values are mean ± std over seeds, ChangeRate in %."
        + subject.fewer_seeds(len(rows), FULL["seeds"], result["command"]),
        *([subject.describe(model)] if model else []),
        f"DBI: {p['n']} training images per seed, eps = {eps}, itr = {p['itr']}, descent on D(p). "
        f"Non-fragile: {p['natural']} natural test images. Random: {p['n']} uniform-noise images. "
        f"Fine-tuning: SGD, all layers, {FINETUNE_ROUNDS} rounds, one round = one step on a minibatch of 64 "
        "attacker images (the second half of the test split, disjoint from every key's samples).",
        f"Model test accuracy: {mean_std([r['accuracy'] for r in rows], 100)} %.",
    ])


def change_rate_table(rows: list[dict]) -> str:
    """Tables 4 and 8 layout: each key's ChangeRate (%) per attack, and the attacked models' accuracy."""
    attacks = list(rows[0]["change_rate"]["DBI"])
    body = [[method, *(mean_std([r["change_rate"][method][a] for r in rows], 100) for a in attacks)]
            for method in rows[0]["change_rate"]]
    body.append(["attacked model accuracy", *(mean_std([r["attacked_accuracy"][a] for r in rows], 100)
                                              for a in attacks)])
    return table(["method", *attacks], body)


def trace_table(rows: list[dict]) -> str:
    """Fig. 5 layout: D(p), confidence, PSNR, SSIM and ChangeRates (%) of the samples at each checkpoint."""
    attacks = list(rows[0]["change_rate"]["DBI"])
    body = []
    for i, point in enumerate(rows[0]["trace"]):
        per = [r["trace"][i] for r in rows]
        body.append([point["itr"], mean_std([t["D"] for t in per], 1, 4), mean_std([t["max_p"] for t in per], 1, 3),
                     mean_std([t["psnr_db"] for t in per]), mean_std([t["ssim"] for t in per], 1, 3),
                     *(mean_std([t[a] for t in per], 100) for a in attacks)])
    return table(["itr", "D(p)", "mean max p", "PSNR dB", "SSIM", *attacks], body)


def false_alarm_table(rows: list[dict]) -> str:
    """DBI samples per seed whose label changes when the untouched model runs in another environment."""
    return table(["environment", *(f"seed {r['seed']}" for r in rows)],
                 [[envs.get(e).description, *(r["false_alarms"][e] for r in rows)] for e in FALSE_ALARM_ENVS])


def timing_table(t: dict) -> str:
    """Generation time, batched against one sample at a time."""
    return table(["batched (one forward/backward per iteration)", "one sample at a time", "ratio"],
                 [[f"{t['batched_s']:.1f} s", f"{t['one_at_a_time_s']:.1f} s", f"{t['ratio']:.1f}x"]])


def render(result: dict) -> str:
    """The Markdown report of a run."""
    rows, p, t = result["seeds"], result["params"], result["timing"]
    return document(
        _intro(result),
        section("ChangeRate under fine-tuning and weight noise (Tables 4 and 8 layout)", change_rate_table(rows),
                "Paper (MNIST, ResNet-18): DBI 80 / 75 / 74 % under fine-tuning at lr 1e-3 / 1e-4 / 1e-5, "
                "86 / 84 / 82 % under noise std 1e-3 / 5e-4 / 1e-4; non-fragile 0.06 / 0.03 %; random 0 %."),
        section("DBI samples along the iterations (Fig. 5 layout)", trace_table(rows),
                "Paper (MNIST): PSNR about 25-29 dB, SSIM about 0.8."),
        section("False alarms of the untouched model",
                f"DBI samples (of {p['n']} per seed) whose label changes when the untouched model runs elsewhere:",
                false_alarm_table(rows)),
        section("Generation time", f"{t['n']} samples x {t['itr']} iterations, measured side by side in one run:",
                timing_table(t)),
    )


def run(*, quick: bool, seeds: int | None, out_dir: str | Path, progress: bool = False,
        model: models.LoadedModel | None = None, data_spec: str | None = None) -> Path:
    """Run the benchmark and write ``dbi.md`` and ``dbi.json`` to ``out_dir``; returns the Markdown path.

    ``model``: a source that can be trained, whose architecture replaces LeNet-5, trained on ``data_spec`` (default:
    the dataset its checkpoint names; see ``subject.foreign``); its files are ``dbi-NAME.md`` and ``dbi-NAME.json``.
    """
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    who = subject.zoo(ZOO_ARCH) if model is None else subject.foreign(model, data_spec)
    ds = who.dataset(who.data or ZOO_DATA)
    rows = [run_seed(s, p, ds, who.build, progress)
            for s in tqdm(range(p["seeds"]), desc="seeds", disable=not progress)]
    result = {
        **header(who.command("dbi"), p, quick=quick, seeds=seeds),
        **who.result_fields(),
        "seeds": rows,
        "timing": time_generation(p, ds, who.build),
    }
    return write(out_dir, who.stem("dbi"), result, render(result))
