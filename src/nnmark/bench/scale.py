"""``nnmark bench scale``: what every method that runs on a model alone costs, from LeNet-5 to ResNet-50 and ViT-S/16.

For each model (random weights: cost does not depend on training) and each method's iterating step, one fresh
process (so its RSS high-water mark is the cell's own) measures on n random images in [0, 1], asked in micro-batches
of ``batch`` through a ``TorchOracle``:

- the floor: one forward + backward of the model's logits over the same n images, and the seconds to verify (one
  labels pass over them, what label keys ask);
- the method's loop run for k1 and for k2 iterations: per-iteration seconds (T(k2) - T(k1)) / (k2 - k1), the fixed
  rest, and the ratio of an iteration to the floor;
- the projection of a 100-query key at the method's default iterations: (fixed + per-iteration x default) x 100 / n
  (an upper bound where a method stops early: pairs, IPGuard, iNNformant);
- peak memory: the process's RSS high-water mark (torch, the model and the work).

SAC and MetaFinger need shadow models (``nnmark bench ownership``), so they are not in this table. A second table
shows peak memory against n and the micro-batch: it follows the batch, not n.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from nnmark.bench.common import document, header, parameters, section, table, write
from nnmark.oracles.local import DEFAULT_BATCH_SIZE as DEFAULT_BATCH

MODELS: dict[str, tuple[str, tuple[int, int, int], int]] = {
    "LeNet-5": ("lenet5", (1, 28, 28), 10),
    "ResNet-20": ("resnet20", (3, 32, 32), 10),
    "ResNet-18": ("resnet18", (3, 32, 32), 10),
    "ResNet-50": ("resnet50", (3, 224, 224), 1000),
    "ViT-S/16": ("vit_s16", (3, 224, 224), 1000),
}
"""Table name -> (zoo architecture, input shape, classes)."""
KEY_N = 100
"""The key size the projections are for."""
LARGE = ("ResNet-50", "ViT-S/16")
FULL = {"seeds": 1, "models": list(MODELS), "n": KEY_N, "n_large": DEFAULT_BATCH, "batch": DEFAULT_BATCH,
        "k": {"LeNet-5": [5, 25], "ResNet-20": [3, 9], "ResNet-18": [1, 3], "ResNet-50": [1, 2], "ViT-S/16": [1, 2]},
        "memory_model": "ResNet-18", "memory_cells": [[64, 16], [256, 16], [64, 64]]}
QUICK = {"seeds": 1, "models": ["LeNet-5"], "n": 8, "n_large": 8, "batch": 4, "k": {"LeNet-5": [1, 3]},
         "memory_model": "LeNet-5", "memory_cells": [[8, 4], [32, 4]]}
GOAL_RATIO = 1.5
GOAL_PEAK_GIB = 4.0
GPU_IMAGES_PER_S = 1500.0
"""The assumed ResNet-50 forward + backward throughput of one H100-class GPU at 224x224 (TF32, a batch of 100):
about half the mixed-precision ResNet-50 training throughput published for one H100. An assumption for the
projection, not a measurement."""
GPU_GOAL_S = 600.0


def _methods() -> dict[str, tuple[Callable, int, str]]:
    """Row name -> (run(oracle, x, k): the method's loop for k iterations, its default iterations, what one
    iteration asks)."""
    import torch

    from nnmark.marks.integrity import aid, baselines, dbi, pairing
    from nnmark.marks.ownership import ipguard
    from nnmark.marks.telltale import innformant

    def head(oracle):
        return pairing.derive_head(b"bench scale", "bench", oracle.num_classes)

    def ipguard_run(oracle, x, k):
        i, j = ipguard.draw_pairs(len(x), oracle.num_classes, torch.Generator().manual_seed(0))
        return ipguard.find_boundary_points(oracle, x, i, j, iterations=k)

    return {
        "dbi": (lambda o, x, k: dbi.fragilize(o, x, dbi.default_eps(o.input_shape), k), dbi.PAPER_ITR,
                "1 gradient"),
        "aid": (lambda o, x, k: aid.find_edge_points(o, x, lr=aid.PAPER_LR, itr=k, beta=aid.DEFAULT_BETA,
                                                     threshold=aid.ACTIVE), aid.PAPER_ITR, "1 gradient + hooks"),
        "pairs stage 1": (lambda o, x, k: pairing.approach_boundary(
            o, head(o), len(x), lam=pairing.DEFAULT_LAMBDA, lr=pairing.PAPER_LR, max_itr=k, tol=0.0, patience=k + 1,
            activation_on=pairing.DEFAULT_ACTIVATION, seed=0), pairing.PAPER_MAX_ITR, "1 gradient"),
        "pairs stage 2": (lambda o, x, k: pairing.cross_boundary(o, head(o), x, alpha=pairing.PAPER_ALPHA,
                                                                 max_steps=k), pairing.DEFAULT_MAX_STEPS,
                          "1 gradient + 1 forward (the crossing is judged on verify's path)"),
        "ipguard": (ipguard_run, ipguard.DEFAULT_ITERATIONS, "1 gradient"),
        "innformant (local)": (lambda o, x, k: innformant.local_phase(o, x, local_max=k), innformant.LOCAL_MAX,
                               "1 gradient (logits reused)"),
        "natural": (lambda o, x, k: baselines.natural(o, x), 0, "1 forward in all"),
    }


def _setup(model_name: str, n: int, batch: int):
    """(oracle over the model with random weights in micro-batches of ``batch``, n random images)."""
    import torch

    from nnmark import models
    from nnmark.oracles import TorchOracle

    arch, shape, classes = MODELS[model_name]
    torch.manual_seed(0)
    model = models.build(arch, shape, classes)
    return TorchOracle(model, shape, classes, batch_size=batch), torch.rand(n, *shape,
                                                                            generator=torch.Generator().manual_seed(1))


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_cell(task: dict) -> dict:
    """One cell, in this process: the floor (``task["row"]`` is "floor") or a method's loop at k1 and k2."""
    import torch

    torch.set_num_threads(task.get("threads", torch.get_num_threads()))
    oracle, x = _setup(task["model"], task["n"], task["batch"])
    ready = _peak_mib()
    floor = lambda: oracle.gradient(lambda z: z.sum(dim=1), x, on="logits")  # noqa: E731
    floor()  # warm-up: the first pass allocates
    floor_s = _seconds(floor)  # in the cell's own process and moment: the machine's load changes between cells
    if task["row"] == "floor":
        return {"floor_s": floor_s, "verify_s": _seconds(lambda: oracle.labels(x)), "ready_mib": ready,
                "peak_mib": _peak_mib()}
    run, _, _ = _methods()[task["row"]]
    k1, k2 = task["k"]
    t1 = _seconds(lambda: run(oracle, x, k1))
    t2 = _seconds(lambda: run(oracle, x, k2))
    return {"floor_s": floor_s, "t1_s": t1, "t2_s": t2, "ready_mib": ready, "peak_mib": _peak_mib()}


def _in_subprocess(task: dict) -> dict:
    """``measure_cell(task)`` in a fresh Python process (its own RSS high-water mark)."""
    code = "import json, sys; from nnmark.bench.scale import measure_cell; print(json.dumps(measure_cell(json.loads(" \
           "sys.argv[1]))))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(task)], check=True, capture_output=True, text=True,
                          timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(model: str, row: str, cell: dict, floor: dict, task: dict) -> dict:
    """A table row from a method cell (its ratio against the floor timed in the same process, where the cell has
    one) and its model's floor cell (verify seconds)."""
    _, default, asks = _methods()[row]
    k1, k2 = task["k"]
    floor_s = cell.get("floor_s", floor["floor_s"])
    if default:
        per_itr = max(cell["t2_s"] - cell["t1_s"], 0.0) / (k2 - k1)
        fixed = max(cell["t1_s"] - k1 * per_itr, 0.0)
        ratio = per_itr / floor_s
    else:  # no loop: the whole run against one pass
        per_itr, fixed, ratio = 0.0, cell["t1_s"], cell["t1_s"] / floor_s
    scale = KEY_N / task["n"]
    return {"model": model, "method": row, "asks": asks, "n": task["n"], "batch": task["batch"], "k": [k1, k2],
            "default_itr": default, "per_itr_s": per_itr, "fixed_s": fixed, "floor_s": floor_s,
            "ratio": ratio, "projected_key_s": (fixed + per_itr * default) * scale, "per_itr_100_s": per_itr * scale,
            "verify_100_s": floor["verify_s"] * scale, "peak_mib": cell["peak_mib"], "ready_mib": cell["ready_mib"]}


def _model_rows(model: str, p: dict, threads: int, bar) -> list[dict]:
    large = model in LARGE
    task = {"model": model, "n": p["n_large"] if large else p["n"], "batch": p["batch"], "threads": threads,
            "k": p["k"][model]}
    floor = _in_subprocess({**task, "row": "floor"})
    bar.update()
    rows = []
    for row in _methods():
        rows.append(_row(model, row, _in_subprocess({**task, "row": row}), floor, task))
        bar.update()
    return rows


def _memory_rows(p: dict, threads: int) -> list[dict]:
    """DBI's peak RSS for each (n, micro-batch) of ``p["memory_cells"]``, one iteration each."""
    rows = []
    for n, batch in p["memory_cells"]:
        cell = _in_subprocess({"model": p["memory_model"], "n": n, "batch": batch, "threads": threads, "row": "dbi",
                               "k": [1, 1]})
        rows.append({"model": p["memory_model"], "n": n, "batch": batch, "peak_mib": cell["peak_mib"],
                     "ready_mib": cell["ready_mib"]})
    return rows


def _fmt_s(s: float) -> str:
    if s >= 7200:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s"


def render(result: dict) -> str:
    p, rows = result["params"], result["rows"]
    main = table(["model", "method", "one iteration asks", "n measured", "s / iteration (100 queries)",
                  "ratio to fwd+bwd floor", "default iterations", "projected 100-query key", "peak RSS MiB",
                  "verify 100 s"],
                 [[r["model"], r["method"], r["asks"], r["n"], f"{r['per_itr_100_s']:.3g}" if r["default_itr"] else "-",
                   f"{r['ratio']:.2f}", f"{r['default_itr']:,}", _fmt_s(r["projected_key_s"]), f"{r['peak_mib']:.0f}",
                   f"{r['verify_100_s']:.3g}"] for r in rows], "llllrrrrrr")
    memory = table(["model", "n", "micro-batch", "RSS after setup MiB", "peak RSS MiB"],
                   [[m["model"], m["n"], m["batch"], f"{m['ready_mib']:.0f}", f"{m['peak_mib']:.0f}"]
                    for m in result["memory"]], "llrrr")
    return document(
        "# Cost at scale: every model-alone method from LeNet-5 to ResNet-50 and ViT-S/16",
        f"`{result['command']}` ({result['date']}); CPU, {result['threads']} torch thread(s) on a shared 2-core "
        f"machine; no GPU was lent to this run. Random weights (cost does not depend on training; a key that must "
        f"flip or match needs trained weights). Micro-batch {p['batch']} (`--batch-size`, the default). Each cell is "
        f"a fresh process; n images measured (ResNet-50 and ViT-S/16: {p['n_large']}, one micro-batch, and scaled "
        f"linearly to {KEY_N}: the micro-batches of a key run one after another). Per-iteration seconds are "
        f"(T(k2) - T(k1)) / (k2 - k1), after one warm-up pass, with (k1, k2) per model: "
        f"{', '.join(f'{m} {k[0]}, {k[1]}' for m, k in p['k'].items())}; the projection is the fixed rest plus the "
        f"default iterations, an upper bound where a method stops early. The machine was shared with other jobs while "
        f"this ran: per-iteration seconds are the difference of two timed runs and carry that noise (a one-gradient "
        f"iteration cannot cost less than the floor; a row below it, or at 0, shows the noise, not a saving).",
        main,
        section("Goals", "\n".join(_goal_lines(result["goals"]))),
        section("Peak memory follows the micro-batch, not n",
                f"DBI, one iteration, {p['memory_model']}: growing n at a fixed micro-batch adds only the images and "
                "their updates; growing the micro-batch adds its activations.", memory),
    )


def _goals(rows: list[dict]) -> dict:
    """The issue's goals as measured: the worst one-gradient ratio, and ResNet-50's peak and DBI projection where
    it was measured."""
    gradient_rows = [r for r in rows if r["default_itr"] and r["method"] != "pairs stage 2"]
    worst = max(gradient_rows, key=lambda r: r["ratio"])
    goals = {"worst_ratio": worst["ratio"], "worst_row": f"{worst['model']}, {worst['method']}"}
    r50 = [r for r in rows if r["model"] == "ResNet-50"]
    if r50:
        dbi_r50 = next(r for r in r50 if r["method"] == "dbi")
        goals.update(resnet50_peak_gib=max(r["peak_mib"] for r in r50) / 1024, dbi_itr=dbi_r50["default_itr"],
                     dbi_resnet50_cpu_s=dbi_r50["projected_key_s"], dbi_resnet50_ratio=max(dbi_r50["ratio"], 1.0),
                     dbi_resnet50_gpu_s=dbi_r50["default_itr"] * KEY_N / GPU_IMAGES_PER_S * max(dbi_r50["ratio"], 1.0))
    return goals


def _goal_lines(goals: dict) -> list[str]:
    lines = [f"- At most {GOAL_RATIO}x the model's own forward+backward floor per iteration (one-gradient methods): "
             f"worst {goals['worst_ratio']:.2f}x ({goals['worst_row']}). Pairs stage 2 judges each crossing with a "
             "forward pass on verify's path: by design 1 gradient + 1 forward per step."]
    if "resnet50_peak_gib" not in goals:
        return [*lines, "- ResNet-50 was not in this run."]
    return [*lines,
            f"- ResNet-50 key peak memory at the default micro-batch on CPU at most {GOAL_PEAK_GIB:g} GiB: "
            f"{goals['resnet50_peak_gib']:.2f} GiB (RSS high-water of the whole process: torch and the model too).",
            f"- A 100-sample DBI key for ResNet-50 at the paper's {goals['dbi_itr']:,} iterations: "
            f"{_fmt_s(goals['dbi_resnet50_cpu_s'])} on these cores. Projection, not a measurement: at an assumed "
            f"{GPU_IMAGES_PER_S:,.0f} images/s forward + backward on an H100-class GPU (TF32, the 100 queries in "
            f"one batch: `--batch-size 100`), times DBI's measured ratio to the floor (at least 1: a gradient costs a "
            f"forward + backward) {goals['dbi_resnet50_ratio']:.2f}, "
            f"{goals['dbi_itr']:,} x {KEY_N} / {GPU_IMAGES_PER_S:,.0f} x {goals['dbi_resnet50_ratio']:.2f} = "
            f"{_fmt_s(goals['dbi_resnet50_gpu_s'])} (goal {_fmt_s(GPU_GOAL_S)}). No GPU was lent to this run."]


def run(*, quick: bool = False, seeds: int | None = None, out_dir: str | Path = "docs/benchmarks",
        progress: bool = False) -> Path:
    import torch

    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    threads = torch.get_num_threads()
    rows: list[dict] = []
    with tqdm(total=len(p["models"]) * (1 + len(_methods())), desc="scale", disable=not progress,
              leave=False) as bar:
        for model in p["models"]:
            rows += _model_rows(model, p, threads, bar)
    result = {**header("scale", p, quick=quick, seeds=seeds), "threads": threads, "rows": rows,
              "memory": _memory_rows(p, threads), "goals": _goals(rows)}
    return write(out_dir, "scale", result, render(result))
