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

``--device cuda`` writes ``scale-cuda.md`` beside the CPU table: the same rows on the card, every model at n = 100
in one micro-batch of 100 (a GPU's batch), each cell in this process (one CUDA start, not one per cell) with the
card's peak memory (``torch.cuda.max_memory_allocated``, reset per cell) in place of the RSS, and one real 100-query
DBI key for ResNet-50 at the paper's 10,000 iterations, stopped at a deadline and then projected from its own rate.
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
FULL_GPU = {**FULL, "n_large": KEY_N, "batch": KEY_N,
            "k": {"LeNet-5": [20, 120], "ResNet-20": [10, 60], "ResNet-18": [10, 60], "ResNet-50": [5, 30],
                  "ViT-S/16": [5, 30]},
            "memory_model": "ResNet-50", "memory_cells": [[KEY_N, 16], [KEY_N, KEY_N], [4 * KEY_N, KEY_N]],
            "full_key": {"model": "ResNet-50", "chunk": 250, "deadline_s": 150}}
"""On a GPU: the key's 100 queries in one micro-batch, more iterations per timing (an iteration takes milliseconds),
and the full DBI key of the goal, cut at ``deadline_s`` (the device's time is lent by the minute)."""
QUICK_GPU = {**QUICK, "full_key": {"model": "LeNet-5", "chunk": 2, "deadline_s": 60}}
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


def _setup(model_name: str, n: int, batch: int, device: str = "cpu"):
    """(oracle over the model with random weights in micro-batches of ``batch`` on ``device``, n random images)."""
    import torch

    from nnmark import models
    from nnmark.oracles import TorchOracle

    arch, shape, classes = MODELS[model_name]
    torch.manual_seed(0)
    model = models.build(arch, shape, classes)
    return (TorchOracle(model, shape, classes, batch_size=batch, device=device),
            torch.rand(n, *shape, generator=torch.Generator().manual_seed(1)))


def _seconds(fn: Callable[[], object], device: str = "cpu") -> float:
    """Wall seconds of ``fn()``, the device's queued work included."""
    import torch

    start = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _peak_mib(device: str = "cpu") -> float:
    """The cell's peak memory: the process's RSS high-water mark on CPU, the card's allocated peak on CUDA."""
    import torch

    if device != "cpu":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_cell(task: dict) -> dict:
    """One cell, in this process: the floor (``task["row"]`` is "floor") or a method's loop at k1 and k2."""
    import torch

    device = task.get("device", "cpu")
    torch.set_num_threads(task.get("threads", torch.get_num_threads()))
    if device != "cpu":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    oracle, x = _setup(task["model"], task["n"], task["batch"], device)
    ready = _peak_mib(device)
    floor = lambda: oracle.gradient(lambda z: z.sum(dim=1), x, on="logits")  # noqa: E731
    floor()  # warm-up: the first pass allocates
    floor_s = _seconds(floor, device)  # in the cell's own moment: the machine's load changes between cells
    if task["row"] == "floor":
        return {"floor_s": floor_s, "verify_s": _seconds(lambda: oracle.labels(x), device), "ready_mib": ready,
                "peak_mib": _peak_mib(device)}
    run, _, _ = _methods()[task["row"]]
    k1, k2 = task["k"]
    t1 = _seconds(lambda: run(oracle, x, k1), device)
    t2 = _seconds(lambda: run(oracle, x, k2), device)
    return {"floor_s": floor_s, "t1_s": t1, "t2_s": t2, "ready_mib": ready, "peak_mib": _peak_mib(device)}


def _measured(task: dict) -> dict:
    """``measure_cell(task)`` in a fresh Python process (its own RSS high-water mark) on CPU; in this process on a
    GPU (whose peak is reset per cell)."""
    if task.get("device", "cpu") != "cpu":
        return measure_cell(task)
    code = "import json, sys; from nnmark.bench.scale import measure_cell; print(json.dumps(measure_cell(json.loads(" \
           "sys.argv[1]))))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(task)], check=True, capture_output=True, text=True,
                          timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def full_key(model: str, chunk: int, deadline_s: float, device: str, progress: bool = False) -> dict:
    """A real 100-query DBI key at the paper's iterations on ``model`` in one micro-batch, run in chunks of
    ``chunk`` iterations (Algorithm 1 has no state beyond x', so chunks are the one run) until done or past
    ``deadline_s``: iterations done, seconds, and the whole key's seconds at that rate."""
    import torch

    from nnmark.marks.integrity import dbi

    oracle, x = _setup(model, KEY_N, KEY_N, device)
    eps, done, start = dbi.default_eps(oracle.input_shape), 0, time.perf_counter()
    with tqdm(total=dbi.PAPER_ITR, desc=f"dbi {model}", disable=not progress, leave=False) as bar:
        while done == 0 or (done < dbi.PAPER_ITR and time.perf_counter() - start < deadline_s):  # one chunk at least
            step = min(chunk, dbi.PAPER_ITR - done)
            x, _ = dbi.fragilize(oracle, x, eps, step)
            done += step
            bar.update(step)
    oracle.labels(x)  # the key's labels y'
    if device != "cpu":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"model": model, "iterations": done, "of": dbi.PAPER_ITR, "seconds": seconds,
            "key_s": seconds * dbi.PAPER_ITR / done, "complete": done == dbi.PAPER_ITR}


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


def _model_rows(model: str, p: dict, threads: int, device: str, bar) -> list[dict]:
    large = model in LARGE
    task = {"model": model, "n": p["n_large"] if large else p["n"], "batch": p["batch"], "threads": threads,
            "k": p["k"][model], "device": device}
    floor = _measured({**task, "row": "floor"})
    bar.update()
    rows = []
    for row in _methods():
        rows.append(_row(model, row, _measured({**task, "row": row}), floor, task))
        bar.update()
    return rows


def _memory_rows(p: dict, threads: int, device: str) -> list[dict]:
    """DBI's peak memory for each (n, micro-batch) of ``p["memory_cells"]``, one iteration each."""
    rows = []
    for n, batch in p["memory_cells"]:
        cell = _measured({"model": p["memory_model"], "n": n, "batch": batch, "threads": threads, "row": "dbi",
                               "k": [1, 1], "device": device})
        rows.append({"model": p["memory_model"], "n": n, "batch": batch, "peak_mib": cell["peak_mib"],
                     "ready_mib": cell["ready_mib"]})
    return rows


def _fmt_s(s: float) -> str:
    if s >= 7200:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s"


def _where(result: dict) -> str:
    """The header's sentence on where the run was measured."""
    if result["device"] == "cpu":
        return (f"CPU, {result['threads']} torch thread(s) on a shared 2-core machine; peak memory is the RSS "
                f"high-water mark of the cell's own process (torch and the model too)")
    return (f"{result['device_name']} ({result['device']}; torch {result['torch']}, CUDA {result['cuda']}; "
            f"TF32 for convolutions {'on' if result['tf32_cudnn'] else 'off'}, for matrix products "
            f"{'on' if result['tf32_matmul'] else 'off'}: torch's defaults, which a key records); peak memory is the "
            "card's allocated peak (`torch.cuda.max_memory_allocated`, reset per cell: the model, activations and "
            "work). The oracle returns every answer to the CPU, so each iteration also moves the images' gradients "
            "to the host and back: the floor pays that too")


def render(result: dict) -> str:
    p, rows = result["params"], result["rows"]
    main = table(["model", "method", "one iteration asks", "n measured", "s / iteration (100 queries)",
                  "ratio to fwd+bwd floor", "default iterations", "projected 100-query key", "peak MiB",
                  "verify 100 s"],
                 [[r["model"], r["method"], r["asks"], r["n"], f"{r['per_itr_100_s']:.3g}" if r["default_itr"] else "-",
                   f"{r['ratio']:.2f}", f"{r['default_itr']:,}", _fmt_s(r["projected_key_s"]), f"{r['peak_mib']:.0f}",
                   f"{r['verify_100_s']:.3g}"] for r in rows], "llllrrrrrr")
    memory = table(["model", "n", "micro-batch", "after setup MiB", "peak MiB"],
                   [[m["model"], m["n"], m["batch"], f"{m['ready_mib']:.0f}", f"{m['peak_mib']:.0f}"]
                    for m in result["memory"]], "llrrr")
    other = ("no GPU was lent to this run (the GPU table, where one was lent: `scale-cuda.md`)"
             if result["device"] == "cpu" else "the CPU table is `scale.md`")
    return document(
        f"# Cost at scale: every model-alone method from LeNet-5 to ResNet-50 and ViT-S/16 ({result['device']})",
        f"`{result['command']}` ({result['date']}); {_where(result)}; {other}. Random weights (cost does not depend "
        f"on training; a key that must flip or match needs trained weights). Micro-batch {p['batch']} "
        f"(`--batch-size`). Each cell measures n images ({p['n']}; {p['n_large']} for {' and '.join(LARGE)}, scaled "
        f"linearly to {KEY_N}: the micro-batches of a key run one after another). "
        f"Per-iteration seconds are (T(k2) - T(k1)) / (k2 - k1), after one warm-up pass, with (k1, k2) per model: "
        f"{', '.join(f'{m} {k[0]}, {k[1]}' for m, k in p['k'].items())}; the projection is the fixed rest plus the "
        f"default iterations, an upper bound where a method stops early. Per-iteration seconds are the difference of "
        f"two timed runs and carry the machine's noise (a one-gradient iteration cannot cost less than the floor; a "
        f"row below it, or at 0, shows the noise, not a saving).",
        main,
        section("Goals", "\n".join(_goal_lines(result))),
        section("Peak memory follows the micro-batch, not n",
                f"DBI, one iteration, {p['memory_model']}: growing n at a fixed micro-batch adds only the images and "
                "their updates; growing the micro-batch adds its activations.", memory),
    )


def _goals(rows: list[dict], device: str) -> dict:
    """The issue's goals as measured: the worst one-gradient ratio, and ResNet-50's peak and DBI projection where
    it was measured (on a GPU from this card's own per-iteration cost, on CPU for an assumed GPU throughput)."""
    gradient_rows = [r for r in rows if r["default_itr"] and r["method"] != "pairs stage 2"]
    worst = max(gradient_rows, key=lambda r: r["ratio"])
    goals = {"worst_ratio": worst["ratio"], "worst_row": f"{worst['model']}, {worst['method']}"}
    r50 = [r for r in rows if r["model"] == "ResNet-50"]
    if r50:
        dbi_r50 = next(r for r in r50 if r["method"] == "dbi")
        assumed = dbi_r50["default_itr"] * KEY_N / GPU_IMAGES_PER_S * max(dbi_r50["ratio"], 1.0)
        goals.update(resnet50_peak_gib=max(r["peak_mib"] for r in r50) / 1024, dbi_itr=dbi_r50["default_itr"],
                     dbi_resnet50_s=dbi_r50["projected_key_s"], dbi_resnet50_ratio=max(dbi_r50["ratio"], 1.0),
                     dbi_resnet50_gpu_s=assumed if device == "cpu" else dbi_r50["projected_key_s"])
    return goals


def _goal_lines(result: dict) -> list[str]:
    goals, device = result["goals"], result["device"]
    lines = [f"- At most {GOAL_RATIO}x the model's own forward+backward floor per iteration (one-gradient methods): "
             f"worst {goals['worst_ratio']:.2f}x ({goals['worst_row']}). Pairs stage 2 judges each crossing with a "
             "forward pass on verify's path: by design 1 gradient + 1 forward per step."]
    if "resnet50_peak_gib" not in goals:
        return [*lines, "- ResNet-50 was not in this run.", *_full_key_lines(result)]
    where = f"the CPU default; goal at most {GOAL_PEAK_GIB:g} GiB" if device == "cpu" else "on the card"
    lines.append(f"- ResNet-50 key peak memory at micro-batch {result['params']['batch']} ({where}): "
                 f"{goals['resnet50_peak_gib']:.2f} GiB.")
    if device == "cpu":
        return [*lines,
                f"- A 100-sample DBI key for ResNet-50 at the paper's {goals['dbi_itr']:,} iterations: "
                f"{_fmt_s(goals['dbi_resnet50_s'])} on these cores. Projection, not a measurement: at an assumed "
                f"{GPU_IMAGES_PER_S:,.0f} images/s forward + backward on an H100-class GPU (TF32, the 100 queries in "
                f"one batch: `--batch-size 100`), times DBI's measured ratio to the floor (at least 1: a gradient "
                f"costs a forward + backward) {goals['dbi_resnet50_ratio']:.2f}, "
                f"{goals['dbi_itr']:,} x {KEY_N} / {GPU_IMAGES_PER_S:,.0f} x {goals['dbi_resnet50_ratio']:.2f} = "
                f"{_fmt_s(goals['dbi_resnet50_gpu_s'])} (goal {_fmt_s(GPU_GOAL_S)}); where a GPU was lent, "
                "`scale-cuda.md` measures it."]
    lines.append(f"- A 100-sample DBI key for ResNet-50 at the paper's {goals['dbi_itr']:,} iterations on this card, "
                 f"from the table's per-iteration cost: {_fmt_s(goals['dbi_resnet50_s'])} (goal {_fmt_s(GPU_GOAL_S)}).")
    return [*lines, *_full_key_lines(result)]


def _full_key_lines(result: dict) -> list[str]:
    """The real DBI key's line, where the run made one (on a GPU)."""
    key = result.get("full_key")
    if not key:
        return []
    run = (f"{key['iterations']:,} of {key['of']:,} iterations in {_fmt_s(key['seconds'])}" +
           ("" if key["complete"] else f", stopped at the run's {result['params']['full_key']['deadline_s']} s "
            f"deadline; the whole key at that rate: {_fmt_s(key['key_s'])}"))
    return [f"- The real key, `dbi.fragilize` on {key['model']} with the 100 queries in one micro-batch: {run}. "
            f"Goal ({_fmt_s(GPU_GOAL_S)}): {'met' if key['key_s'] <= GPU_GOAL_S else 'not met'}."]


def _where_fields(device: str) -> dict:
    """What the header says of the device: its name, torch and CUDA versions and TF32 defaults."""
    import torch

    from nnmark.oracles.local import device_name

    if device == "cpu":
        return {}
    return {"device_name": device_name(torch.device(device)), "torch": torch.__version__, "cuda": torch.version.cuda,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def run(*, quick: bool = False, seeds: int | None = None, out_dir: str | Path = "docs/benchmarks",
        progress: bool = False, device: str = "cpu") -> Path:
    import torch

    from nnmark.envs import resolve_device

    device = resolve_device(device)
    gpu = device != "cpu"
    p = parameters(FULL_GPU if gpu else FULL, QUICK_GPU if gpu else QUICK, quick=quick, seeds=seeds)
    threads = torch.get_num_threads()
    rows: list[dict] = []
    with tqdm(total=len(p["models"]) * (1 + len(_methods())), desc="scale", disable=not progress,
              leave=False) as bar:
        for model in p["models"]:
            rows += _model_rows(model, p, threads, device, bar)
    result = {**header("scale", p, quick=quick, seeds=seeds), "device": device, "threads": threads, "rows": rows,
              **_where_fields(device), "memory": _memory_rows(p, threads, device), "goals": _goals(rows, device)}
    if gpu:
        result["command"] += f" --device {device}"
        result["full_key"] = full_key(**p["full_key"], device=device, progress=progress)
    return write(out_dir, "scale" if not gpu else f"scale-{torch.device(device).type}", result, render(result))
