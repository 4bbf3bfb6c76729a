"""``nnmark bench scale``: what every method that runs on a model alone costs, from LeNet-5 to ResNet-50 and ViT-S/16.

For each model (random weights: cost does not depend on training) and each method's iterating step, one fresh
process (so its RSS high-water mark is the cell's own) measures on n random images in [0, 1], asked in micro-batches
of ``batch`` through a ``TorchOracle``, after one warm-up pass, ``repeats`` times in turn (the floor, then the method):

- the floor: one forward + backward of the model's logits over the same n images through the same oracle (same
  batch, micro-batches and threads), and the seconds to verify (one labels pass over them, what label keys ask);
- the method's loop run for k iterations, each of its gradient calls stamped: an iteration is the time from one
  call over all n images to the next (the method's own work between calls included; calls over fewer images, once
  some samples stopped, are left out);
- seconds are the cell process's CPU seconds where it runs one torch thread (``time.process_time``: the time other
  processes hold the core does not count; on an idle core they are its wall seconds), else wall seconds;
- per-iteration seconds and the floor are each the minimum over every timed iteration and repeat: on a shared host
  the load only ever adds time, so the fastest of several runs is the estimate that carries the least of it (the
  usual rule of ``timeit``); the ratio is the one over the other, both from the cell's own process;
- the projection of a 100-query key at the method's default iterations: (fixed + per-iteration x default) x 100 / n,
  the fixed rest being the fastest whole run less its k iterations (an upper bound where a method stops early: pairs,
  IPGuard, iNNformant);
- peak memory: the process's RSS high-water mark (torch, the model and the work).

SAC and MetaFinger train models for a key. Their table measures, on the same model and batch, one training step
(``models.training.fit``, Adam, a batch of ``training.DEFAULT_BATCH_SIZE``) against the model's own training floor,
the same step at the default training micro-batch ("auto": as many images a pass as fit
``models.training.ACTIVATION_BUDGET``, ``--train-micro-batch``) and its peak memory, and one MetaFinger
meta-training step (``metafinger.step_gradient``: the anchor and k positive and k negative models, here copies of
the one model), each the minimum over the repeats, and projects a key with the defaults: the shadow pools
(``shadow.pool_specs``' model-epochs), SAC's ``sac.DEFAULT_SCRATCH_NEGATIVES`` scratch models of
``sac.SCRATCH_EPOCHS`` epochs and its forward passes, MetaFinger's meta-training (``metafinger.PAPER_EPOCHS`` epochs
of one step per anchor over 2n candidates), over an owner's training split of the size stated per model. A second
table shows peak memory against n and the micro-batch: it follows the batch, not n.

``--device cuda`` writes ``scale-cuda.md`` beside the CPU table: the same rows on the card, every model at n = 100
in one micro-batch of 100 (a GPU's batch), each cell in this process (one CUDA start, not one per cell) with the
card's peak memory (``torch.cuda.max_memory_allocated``, reset per cell) in place of the RSS, and one real 100-query
DBI key for ResNet-50 at the paper's 10,000 iterations, stopped at a deadline and then projected from its own rate.
"""

from __future__ import annotations

import json
import math
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
OWNER_IMAGES = {"LeNet-5": 30_000, "ResNet-20": 25_000, "ResNet-18": 25_000, "ResNet-50": 640_000,
                "ViT-S/16": 640_000}
"""The owner's training split a shadow model trains on, per model (an assumption for the projections, not data
loaded here): the owner's half of Fashion-MNIST's 60,000 images at 28x28, of CIFAR-10's 50,000 at 32x32, of
ImageNet-1k's 1.28 million at 224x224."""
FULL = {"seeds": 1, "models": list(MODELS), "n": KEY_N, "n_large": DEFAULT_BATCH, "batch": DEFAULT_BATCH,
        "k": {"LeNet-5": 10, "ResNet-20": 4, "ResNet-18": 2, "ResNet-50": 3, "ViT-S/16": 3},
        "repeats": {"LeNet-5": 3, "ResNet-20": 3, "ResNet-18": 2, "ResNet-50": 1, "ViT-S/16": 1},
        "memory_model": "ResNet-18", "memory_cells": [[64, 16], [256, 16], [64, 64]]}
"""k iterations per run and ``repeats`` runs per cell, each run after k - 1 floor passes (at least one): repeats x
(k - 1) whole iterations timed per method (fewer where samples stop) against as many floor passes, and one more
floor pass to warm up (the large models' single run warms the method up with its first iteration)."""
QUICK = {"seeds": 1, "models": ["LeNet-5"], "n": 8, "n_large": 8, "batch": 4, "k": {"LeNet-5": 3},
         "repeats": {"LeNet-5": 2}, "memory_model": "LeNet-5", "memory_cells": [[8, 4], [32, 4]]}
FULL_GPU = {**FULL, "n_large": KEY_N, "batch": KEY_N,
            "k": {"LeNet-5": 40, "ResNet-20": 20, "ResNet-18": 20, "ResNet-50": 10, "ViT-S/16": 10},
            "repeats": {m: 3 for m in MODELS},
            "memory_model": "ResNet-50", "memory_cells": [[KEY_N, 16], [KEY_N, KEY_N], [4 * KEY_N, KEY_N]],
            "full_key": {"model": "ResNet-50", "chunk": 250, "deadline_s": 150}}
"""On a GPU: the key's 100 queries in one micro-batch, more iterations per timing (an iteration takes milliseconds),
and the full DBI key of the goal, cut at ``deadline_s`` (the device's time is lent by the minute)."""
QUICK_GPU = {**QUICK, "full_key": {"model": "LeNet-5", "chunk": 2, "deadline_s": 60}}
GOAL_RATIO = 1.5
GOAL_PEAK_GIB = 4.0
A100_TF32_TRAIN_IMAGES_PER_S = 938.0
"""ResNet-50 v1.5 training throughput on one A100 80GB at TF32 (PyTorch, NGC 21.03; mixed precision: 2,470), as
NVIDIA publishes it: ``A100_SOURCE``. A training step is a forward, a backward to the activations and one to the
weights, and an optimizer step."""
A100_SOURCE = ("https://github.com/NVIDIA/DeepLearningExamples/blob/master/PyTorch/Classification/ConvNets/"
               "resnet50v1.5/README.md#training-performance-nvidia-dgx-a100-8x-a100-80gb")
INPUT_GRADIENT_SHARE = 2 / 3
"""The share of a training step's work an input gradient does: ``TorchOracle.gradient`` asks
``torch.autograd.grad`` for the input alone, so the backward skips the weights' gradients (about a third of a
step: forward, backward to the activations, backward to the weights, each about one forward's work) and no
optimizer steps. An estimate, used only for the projection."""
GPU_GOAL_S = 600.0
H100_VISION_SPEEDUP = 2.0
"""An H100 SXM over an A100 SXM on vision models' training, "~2x", as Lambda's published analysis puts it
(``H100_SOURCE``; 3x on Tensor Core throughput, more on language models): a second-hand factor, stated beside the A100
projection, not folded into it."""
H100_SOURCE = "https://lambdalabs.com/blog/nvidia-h100-gpu-deep-learning-performance-analysis"


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


def _now(device: str = "cpu") -> float:
    """The cell's clock: on CPU with one torch thread, the process's CPU seconds (``time.process_time``: the time
    other processes hold the core does not count; on an idle core, the wall time); else ``time.perf_counter()``, on
    a card once its queued work is done."""
    import torch

    if device != "cpu":
        torch.cuda.synchronize(device)
    elif torch.get_num_threads() == 1:
        return time.process_time()
    return time.perf_counter()


def _seconds(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds of ``fn()`` on the cell's clock (``_now``), the device's queued work included."""
    start = _now(device)
    fn()
    return _now(device) - start


def _fastest(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """The least seconds (``_seconds``) of ``repeats`` calls of ``fn()``."""
    return min(_seconds(fn, device) for _ in range(repeats))


def _peak_mib(device: str = "cpu") -> float:
    """The cell's peak memory: the process's RSS high-water mark on CPU, the card's allocated peak on CUDA."""
    import torch

    if device != "cpu":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def iteration_seconds(stamps: list[tuple[float, int]], n: int) -> list[float]:
    """Whole iterations from the (start time, rows) of a loop's gradient calls: the time from each call over all
    ``n`` rows to the next call (a call over fewer rows, once some samples stopped, does less work)."""
    return [later[0] - start for (start, rows), later in zip(stamps, stamps[1:]) if rows == n]


def _stamping(oracle, stamps: list[tuple[float, int]], device: str) -> None:
    """Make ``oracle`` append the start time (``_now``) and rows of each of its gradient calls to ``stamps``."""
    ask = oracle.gradient

    def gradient(loss_fn, x, **kwargs):
        stamps.append((_now(device), len(x)))
        return ask(loss_fn, x, **kwargs)

    oracle.gradient = gradient


def _loop_cell(oracle, x, floor: Callable, task: dict, device: str) -> dict:
    """A method's loop, ``task["repeats"]`` runs of k iterations, each after k - 1 floor passes (at least one: as
    many as the run's whole iterations): the fastest floor, the fastest whole run and the fastest whole iteration
    (NaN where no iteration ran over all n images)."""
    run, _, _ = _methods()[task["row"]]
    stamps: list[tuple[float, int]] = []
    _stamping(oracle, stamps, device)
    floors, runs, iterations = [], [], []
    for _ in range(task["repeats"]):
        floors += [_seconds(floor, device) for _ in range(max(task["k"] - 1, 1))]  # as many as iterations
        stamps.clear()
        runs.append(_seconds(lambda: run(oracle, x, task["k"]), device))
        iterations += iteration_seconds(stamps, len(x))
    return {"floor_s": min(floors), "run_s": min(runs), "per_itr_s": min(iterations, default=math.nan),
            "iterations_timed": len(iterations)}


def _training_cell(oracle, x, floor: Callable, task: dict, device: str) -> dict:
    """What SAC's and MetaFinger's keys repeat, the fastest of each over the repeats. First, per repeat: a floor pass,
    two training steps at the default micro-batch ("auto", ``models.training.micro_batches``; the second timed:
    ``models.training.fit``'s Adam on cross-entropy, a batch of its default size drawn from the n images) and one
    MetaFinger meta-training step over the n images (``metafinger.step_gradient``, the model as anchor and as its k
    positive and k negative models); the peak memory so far. Then, per repeat: the model's own training floor (a
    forward in training mode and a backward of cross-entropy into the weights, on a batch of ``fit``'s size, no
    optimizer) and two whole-batch training steps (the peak is the cell's)."""
    import torch

    from nnmark.marks.ownership import metafinger
    from nnmark.models import training

    model, x = oracle.model, x.to(oracle.device)
    y = torch.arange(len(x), device=x.device) % oracle.num_classes
    batch = torch.arange(training.DEFAULT_BATCH_SIZE, device=x.device) % len(x)

    def train_floor() -> None:
        model.train()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    def step() -> float:
        stamps = []
        training.fit(model, x, y, lr=training.DEFAULT_LR, steps=2, after_step=lambda: stamps.append(_now(device)))
        model.eval()
        return stamps[1] - stamps[0]

    k = metafinger.PAPER_K
    floors, auto, metas, train_floors, steps = [], [], [], [], []
    for _ in range(task["repeats"]):
        floors.append(_seconds(floor, device))
        with training.micro_batches(training.AUTO):
            auto.append(step())
        metas.append(_seconds(lambda: metafinger.step_gradient(model, [model] * k, [model] * k, x,
                                                               metafinger.PAPER_LAMBDA, task["batch"]), device))
    auto_peak = _peak_mib(device)
    auto_size = training.resolve_micro_batch(training.AUTO, model.train(), x, training.DEFAULT_BATCH_SIZE)
    model.eval()
    for _ in range(task["repeats"]):
        train_floors.append(_seconds(train_floor, device))
        steps.append(step())
    return {"floor_s": min(floors), "train_floor_s": min(train_floors), "train_step_s": min(steps),
            "auto_step_s": min(auto), "auto_peak_mib": auto_peak, "meta_step_s": min(metas),
            "auto_micro_batch": auto_size}


def measure_cell(task: dict) -> dict:
    """One cell, in this process: the floor and verify (``task["row"]`` is "floor"), SAC's and MetaFinger's steps
    ("training") or a method's loop."""
    import torch

    device = task.get("device", "cpu")
    torch.set_num_threads(task.get("threads", torch.get_num_threads()))
    if device != "cpu":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    oracle, x = _setup(task["model"], task["n"], task["batch"], device)
    ready = _peak_mib(device)
    ask = oracle.gradient
    floor = lambda: ask(lambda z: z.sum(dim=1), x, on="logits")  # noqa: E731
    floor()  # warm-up: the first pass allocates
    if task["row"] == "floor":
        cell = {"floor_s": _fastest(floor, task["repeats"], device),
                "verify_s": _fastest(lambda: oracle.labels(x), task["repeats"], device)}
    elif task["row"] == "training":
        cell = _training_cell(oracle, x, floor, task, device)
    else:
        cell = _loop_cell(oracle, x, floor, task, device)
    return {**cell, "ready_mib": ready, "peak_mib": _peak_mib(device)}


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
    """A table row from a method cell (its ratio against the floor timed in the same process) and its model's floor
    cell (verify seconds)."""
    _, default, asks = _methods()[row]
    k = task["k"]
    if default:
        per_itr = cell["per_itr_s"]
        fixed, ratio = max(cell["run_s"] - k * per_itr, 0.0), per_itr / cell["floor_s"]
    else:  # no loop: the whole run against one pass
        per_itr, fixed, ratio = 0.0, cell["run_s"], cell["run_s"] / cell["floor_s"]
    scale = KEY_N / task["n"]
    return {"model": model, "method": row, "asks": asks, "n": task["n"], "batch": task["batch"], "k": k,
            "repeats": task["repeats"], "iterations_timed": cell["iterations_timed"], "default_itr": default,
            "per_itr_s": per_itr, "fixed_s": fixed, "floor_s": cell["floor_s"], "ratio": ratio,
            "projected_key_s": (fixed + per_itr * default) * scale, "per_itr_100_s": per_itr * scale,
            "verify_100_s": floor["verify_s"] * scale, "peak_mib": cell["peak_mib"], "ready_mib": cell["ready_mib"]}


def pool_counts() -> dict[str, int]:
    """What MetaFinger's default pools (``shadow.pool_specs`` with ``PoolLayout()``) cost and hold: model-epochs of
    training (a from-scratch model's or a student's epochs, an eq. 1 copy's fine-tune epochs; the source is the
    owner's and not counted), meta-training's anchors (the source and the positive train models), its validation
    models (the source, positive and negative validation models) and the negative train families."""
    from nnmark.marks.ownership import shadow

    pools = shadow.pool_specs("lenet5", "digits", "0" * 64)
    student = lambda s: (s.variant or "").partition(":")[0] in shadow.STUDENT_VARIANTS  # noqa: E731
    return {"epochs": sum(s.finetune_epochs if s.augmented and not student(s) else s.epochs
                          for group in pools.values() for s in group),
            "anchors": 1 + len(pools["positives_train"]),
            "val_models": 1 + len(pools["positives_val"]) + len(pools["negatives_val"]),
            "families": len([s for s in pools["negatives_train"] if not s.augmented])}


def _meta_step_models() -> int:
    """The models one MetaFinger meta-training step runs: the anchor and its k positive and k negative ones."""
    from nnmark.marks.ownership import metafinger

    return 2 * metafinger.PAPER_K + 1


def _training_row(model: str, cell: dict, floor: dict, task: dict) -> dict:
    """SAC's and MetaFinger's projected 100-query keys from a training cell and the model's floor cell: the pools'
    model-epochs, SAC's scratch models and forward passes (the source, one model per family and the scratch models
    over the queries), MetaFinger's meta-training (per epoch one step per anchor and one labels pass per validation
    model over 2n candidates), each epoch over ``OWNER_IMAGES[model]`` images."""
    from nnmark.marks.ownership import metafinger, sac
    from nnmark.models import training

    counts, n = pool_counts(), task["n"]
    per_image = cell["train_step_s"] / training.DEFAULT_BATCH_SIZE
    epoch_s = per_image * OWNER_IMAGES[model]
    verify_100 = floor["verify_s"] * KEY_N / n
    pools_s = counts["epochs"] * epoch_s
    starts = metafinger.Settings().starts
    meta_s = metafinger.PAPER_EPOCHS * (counts["anchors"] * cell["meta_step_s"]
                                        + counts["val_models"] * floor["verify_s"]) * starts / n
    scratch = sac.DEFAULT_SCRATCH_NEGATIVES * sac.SCRATCH_EPOCHS
    forwards = 1 + counts["families"] + sac.DEFAULT_SCRATCH_NEGATIVES
    return {"model": model, "n": n, "train_step_s": cell["train_step_s"], "train_per_image_s": per_image,
            "train_ratio": cell["train_step_s"] / cell["train_floor_s"], "owner_images": OWNER_IMAGES[model],
            "epoch_s": epoch_s, "auto_ratio": cell["auto_step_s"] / cell["train_step_s"],
            "auto_peak_mib": cell["auto_peak_mib"], "auto_micro_batch": cell["auto_micro_batch"],
            "pool_epochs": counts["epochs"], "pools_s": pools_s,
            "sac_scratch_epochs": scratch,
            "sac_key_s": pools_s + scratch * epoch_s + forwards * verify_100, "meta_step_s": cell["meta_step_s"],
            "meta_ratio": cell["meta_step_s"] / (_meta_step_models() * cell["floor_s"]),
            "meta_train_s": meta_s, "metafinger_key_s": pools_s + meta_s, "verify_100_s": verify_100,
            "peak_mib": cell["peak_mib"], "ready_mib": cell["ready_mib"]}


def _model_rows(model: str, p: dict, threads: int, device: str, bar) -> tuple[list[dict], dict]:
    """The model's method rows and its SAC and MetaFinger row."""
    large = model in LARGE
    task = {"model": model, "n": p["n_large"] if large else p["n"], "batch": p["batch"], "threads": threads,
            "k": p["k"][model], "repeats": p["repeats"][model], "device": device}
    floor = _measured({**task, "row": "floor"})
    bar.update()
    rows = []
    for row in _methods():
        rows.append(_row(model, row, _measured({**task, "row": row}), floor, task))
        bar.update()
    trained = _training_row(model, _measured({**task, "row": "training"}), floor, task)
    bar.update()
    return rows, trained


def _memory_rows(p: dict, threads: int, device: str) -> list[dict]:
    """DBI's peak memory for each (n, micro-batch) of ``p["memory_cells"]``, one iteration each."""
    rows = []
    for n, batch in p["memory_cells"]:
        cell = _measured({"model": p["memory_model"], "n": n, "batch": batch, "threads": threads, "row": "dbi",
                          "k": 1, "repeats": 1, "device": device})
        rows.append({"model": p["memory_model"], "n": n, "batch": batch, "peak_mib": cell["peak_mib"],
                     "ready_mib": cell["ready_mib"]})
    return rows


def _fmt_s(s: float) -> str:
    if s >= 14 * 86400:
        return f"{s / 86400:,.0f} days"
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


def _main_table(rows: list[dict]) -> str:
    return table(["model", "method", "one iteration asks", "n measured", "iterations timed",
                  "s / iteration (100 queries)", "ratio to fwd+bwd floor", "default iterations",
                  "projected 100-query key", "peak MiB", "verify 100 s"],
                 [[r["model"], r["method"], r["asks"], r["n"], r["iterations_timed"] if r["default_itr"] else "-",
                   f"{r['per_itr_100_s']:.3g}" if r["default_itr"] else "-", f"{r['ratio']:.2f}",
                   f"{r['default_itr']:,}", _fmt_s(r["projected_key_s"]), f"{r['peak_mib']:.0f}",
                   f"{r['verify_100_s']:.3g}"] for r in rows], "lllllrrrrrr")


def _training_section(result: dict) -> str:
    """SAC's and MetaFinger's table: what a key trains, measured per step and projected with the defaults."""
    trained = result["trained"]
    if not trained:
        return ""
    from nnmark.marks.ownership import metafinger, sac, shadow
    from nnmark.models import training

    first, k = trained[0], metafinger.PAPER_K
    rows = [[t["model"], f"{t['train_per_image_s'] * 1000:.3g}", f"{t['train_ratio']:.2f}", f"{t['owner_images']:,}",
             _fmt_s(t["epoch_s"]), _fmt_s(t["pools_s"]), _fmt_s(t["sac_key_s"]),
             f"{t['meta_ratio']:.2f}", _fmt_s(t["meta_train_s"]), _fmt_s(t["metafinger_key_s"]), f"{t['peak_mib']:.0f}",
             t["auto_micro_batch"] or "whole", f"{t['auto_ratio']:.2f}", f"{t['auto_peak_mib']:.0f}",
             f"{t['verify_100_s']:.3g}"]
            for t in trained]
    return section(
        "SAC and MetaFinger: the models a key trains",
        f"Per model, on the same n images and micro-batch as above, in a cell of its own: one training step "
        f"(`models.training.fit`: Adam on cross-entropy, a batch of {training.DEFAULT_BATCH_SIZE}; its ratio is "
        f"against the model's own training floor on that batch: a forward in training mode and a backward of the loss "
        f"into the weights, no optimizer) and one MetaFinger meta-training step "
        f"(`metafinger.step_gradient`: the anchor and {k} positive and {k} negative models, here the one model "
        f"{_meta_step_models()} times, one graph at a time and the anchor's forward twice; its ratio is against "
        f"{_meta_step_models()} floors), each the fastest of the cell's repeats; the training step at the "
        f"default micro-batch (`--train-micro-batch auto`: as many images a pass as keep the activations it saves "
        f"within {training.ACTIVATION_BUDGET / 2**30:g} GiB, measured on the model; the same step, its gradients "
        f"summed over the passes; its time against the whole step's), and the cell's peak memory at these defaults, "
        f"before any whole-batch step; *peak MiB* is the cell's, whole batches included (`--train-micro-batch "
        f"whole`). "
        f"Projected with the defaults (random weights; seconds, not accuracy): an epoch is the owner's training "
        f"split (assumed: half of Fashion-MNIST, CIFAR-10 or ImageNet-1k's training images by input size) at the "
        f"step's rate; MetaFinger's default pools (`shadow.PoolLayout()`) train {first['pool_epochs']} model-epochs "
        f"(from-scratch models for {shadow.DEFAULT_EPOCHS} epochs, eq. 1 copies fine-tuned for "
        f"{shadow.DEFAULT_FINETUNE_EPOCHS}; built once per source and cached, shared by SAC and MetaFinger); SAC "
        f"adds {sac.DEFAULT_SCRATCH_NEGATIVES} scratch models of {sac.SCRATCH_EPOCHS} epochs "
        f"({first['sac_scratch_epochs']} model-epochs) and the forward passes of the source and its calibration "
        f"models over the queries; MetaFinger adds its meta-training "
        f"({metafinger.PAPER_EPOCHS} epochs of one step per anchor over {metafinger.Settings().starts} candidates, "
        f"and the validation models' labels). Training runs on CPU here; `--device` trains the pools on a card.",
        table(["model", "train ms / image", "train ratio to floor", "owner images", "s / epoch", "pools",
               "SAC key", "meta-step ratio", "meta-training", "MetaFinger key", "peak MiB",
               "auto: images a pass", "auto step / whole", "peak MiB at the defaults", "verify 100 s"], rows,
              "lrrrrrrrrrrrrrr"))


def _clock(result: dict) -> str:
    """The header's words on what the cells' seconds count (``_now``)."""
    if result["device"] == "cpu" and result["threads"] == 1:
        return ("Seconds are the cell process's CPU seconds (`time.process_time`, one torch thread): the time other "
                "processes of the shared host hold the core does not count, and on an idle core they are its wall "
                "seconds")
    return "Seconds are wall seconds" + ("" if result["device"] == "cpu" else ", the card's queued work included")


def render(result: dict) -> str:
    p = result["params"]
    memory = table(["model", "n", "micro-batch", "after setup MiB", "peak MiB"],
                   [[m["model"], m["n"], m["batch"], f"{m['ready_mib']:.0f}", f"{m['peak_mib']:.0f}"]
                    for m in result["memory"]], "llrrr")
    other = ("no GPU was lent to this run (the GPU table, where one was lent: `scale-cuda.md`)"
             if result["device"] == "cpu" else "the CPU table is `scale.md`")
    blocks = [
        f"# Cost at scale: every model-alone method from LeNet-5 to ResNet-50 and ViT-S/16 ({result['device']})",
        f"`{result['command']}` ({result['date']}); {_where(result)}; {other}. Random weights (cost does not depend "
        f"on training; a key that must flip or match needs trained weights). Micro-batch {p['batch']} "
        f"(`--batch-size`). Each cell measures n images ({p['n']}; {p['n_large']} for {' and '.join(LARGE)}, scaled "
        f"linearly to {KEY_N}: the micro-batches of a key run one after another), in a process of its own, after "
        f"one warm-up pass. Timing on a busy host: each cell runs, per model's repeats "
        f"({', '.join(f'{m} {r}' for m, r in p['repeats'].items())}), one floor pass (forward + backward of the "
        f"logits, the same images, oracle, micro-batches and threads) and then the method's loop for k iterations "
        f"({', '.join(f'{m} {k}' for m, k in p['k'].items())}), every gradient call stamped. An iteration is the "
        f"time from one call over all n images to the next (the method's own work included). {_clock(result)}; "
        f"per-iteration seconds and the floor are each the minimum over all timed iterations and repeats (load only "
        f"adds time: the fastest run carries the least of it), and the ratio is one over the other from the same "
        f"process. The "
        f"projection is the fixed rest (the fastest whole run less its k iterations) plus the default iterations, an "
        f"upper bound where a method stops early.",
        _main_table(result["rows"]),
        section("Goals", "\n".join(_goal_lines(result))),
        _training_section(result),
        section("Peak memory follows the micro-batch, not n",
                f"DBI, one iteration, {p['memory_model']}: growing n at a fixed micro-batch adds only the images and "
                "their updates; growing the micro-batch adds its activations.", memory),
    ]
    return document(*[b for b in blocks if b])


def _goals(rows: list[dict], device: str) -> dict:
    """The issue's goals as measured: the worst one-gradient ratio, and ResNet-50's peak and DBI projection where
    it was measured (on a GPU from this card's own per-iteration cost, on CPU from a published GPU throughput)."""
    gradient_rows = [r for r in rows if r["default_itr"] and r["method"] != "pairs stage 2"
                     and math.isfinite(r["ratio"])]
    worst = max(gradient_rows, key=lambda r: r["ratio"])
    goals = {"worst_ratio": worst["ratio"], "worst_row": f"{worst['model']}, {worst['method']}"}
    r50 = [r for r in rows if r["model"] == "ResNet-50"]
    if r50:
        dbi_r50 = next(r for r in r50 if r["method"] == "dbi")
        ratio = max(dbi_r50["ratio"], 1.0)
        projected = dbi_r50["default_itr"] * KEY_N / gpu_gradient_images_per_s() * ratio
        goals.update(resnet50_peak_gib=max(r["peak_mib"] for r in r50) / 1024, dbi_itr=dbi_r50["default_itr"],
                     dbi_resnet50_s=dbi_r50["projected_key_s"], dbi_resnet50_ratio=ratio,
                     dbi_resnet50_gpu_s=projected if device == "cpu" else dbi_r50["projected_key_s"])
    return goals


def gpu_gradient_images_per_s() -> float:
    """Input gradients per second of ResNet-50 on one A100 at TF32, from its published training throughput: a
    gradient does ``INPUT_GRADIENT_SHARE`` of a training step's work."""
    return A100_TF32_TRAIN_IMAGES_PER_S / INPUT_GRADIENT_SHARE


def _goal_lines(result: dict) -> list[str]:
    goals, device = result["goals"], result["device"]
    lines = [f"- At most {GOAL_RATIO}x the model's own forward+backward floor per iteration (one-gradient methods): "
             f"worst {goals['worst_ratio']:.2f}x ({goals['worst_row']}). Pairs stage 2 judges each crossing with a "
             "forward pass on verify's path: by design 1 gradient + 1 forward per step."]
    if result.get("trained"):
        train = max(result["trained"], key=lambda t: t["train_ratio"])
        meta = max(result["trained"], key=lambda t: t["meta_ratio"])
        lines.append(f"- SAC's and MetaFinger's training: a training step at most {train['train_ratio']:.2f}x the "
                     f"model's own training floor ({train['model']}), a meta-training step at most "
                     f"{meta['meta_ratio']:.2f}x its {_meta_step_models()} floors ({meta['model']}).")
    if "resnet50_peak_gib" not in goals:
        return [*lines, "- ResNet-50 was not in this run.", *_full_key_lines(result)]
    from nnmark.models import training

    where = f"the CPU default; goal at most {GOAL_PEAK_GIB:g} GiB" if device == "cpu" else "on the card"
    lines.append(f"- ResNet-50 key peak memory at micro-batch {result['params']['batch']} ({where}): "
                 f"{goals['resnet50_peak_gib']:.2f} GiB for the model-alone methods" +
                 "".join(f"; {t['auto_peak_mib'] / 1024:.2f} GiB for SAC's and MetaFinger's training at the defaults "
                         f"(a training step at the batch of {training.DEFAULT_BATCH_SIZE}, "
                         f"{t['auto_micro_batch'] or 'all'} images a pass, and a meta-training step through "
                         f"{_meta_step_models()} models, one graph at a time), {t['peak_mib'] / 1024:.2f} GiB with "
                         "whole training batches (`--train-micro-batch whole`)"
                         for t in result.get("trained", []) if t["model"] == "ResNet-50") + ".")
    if device == "cpu":
        rate = gpu_gradient_images_per_s()
        return [*lines,
                f"- A 100-sample DBI key for ResNet-50 at the paper's {goals['dbi_itr']:,} iterations: "
                f"{_fmt_s(goals['dbi_resnet50_s'])} on these cores. On a GPU, a projection, not a measurement: "
                f"NVIDIA publishes ResNet-50 v1.5 training at {A100_TF32_TRAIN_IMAGES_PER_S:,.0f} images/s on one "
                f"A100 80GB at TF32 (2,470 in mixed precision; [DeepLearningExamples]({A100_SOURCE})). DBI's "
                f"gradient is for the input alone (`torch.autograd.grad` of the images: no weight gradients, no "
                f"optimizer step), about {INPUT_GRADIENT_SHARE:.2f} of a training step's work, so about "
                f"{rate:,.0f} gradients/s; times DBI's measured ratio to the floor (at least 1) "
                f"{goals['dbi_resnet50_ratio']:.2f}: {goals['dbi_itr']:,} x {KEY_N} / {rate:,.0f} x "
                f"{goals['dbi_resnet50_ratio']:.2f} = {_fmt_s(goals['dbi_resnet50_gpu_s'])} on an A100 at TF32 "
                f"(goal {_fmt_s(GPU_GOAL_S)} on an H100-class card). An H100 is faster: [Lambda's analysis]"
                f"({H100_SOURCE}) reports about {H100_VISION_SPEEDUP:g}x an A100 on vision models, which would make it "
                f"{_fmt_s(goals['dbi_resnet50_gpu_s'] / H100_VISION_SPEEDUP)} (a second-hand factor, not a "
                "measurement). Mixed precision would be faster still, but a key made in it records "
                "another environment (nnmark makes keys in the model's own dtype). Where a GPU was lent, "
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
    trained: list[dict] = []
    with tqdm(total=len(p["models"]) * (2 + len(_methods())), desc="scale", disable=not progress,
              leave=False) as bar:
        for model in p["models"]:
            method_rows, training_row = _model_rows(model, p, threads, device, bar)
            rows += method_rows
            trained.append(training_row)
    result = {**header("scale", p, quick=quick, seeds=seeds), "device": device, "threads": threads, "rows": rows,
              "trained": trained, **_where_fields(device), "memory": _memory_rows(p, threads, device),
              "goals": _goals(rows, device)}
    if gpu:
        result["command"] += f" --device {device}"
        result["full_key"] = full_key(**p["full_key"], device=device, progress=progress)
    return write(out_dir, "scale" if not gpu else f"scale-{torch.device(device).type}", result, render(result))
