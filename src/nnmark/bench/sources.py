"""``nnmark bench sources``: the cost of each model source kind, on the same weights, side by side in one run.

The held-out architecture written only for the benchmarks (``nnmark.bench.heldout:groupnorm_gelu``: GroupNorm +
GELU, RGB 32x32, mean/std normalisation; not a zoo model) is saved once as factory weights (eager torch),
TorchScript, torch.export and ONNX, and each is loaded with ``models.load_any``; ONNX twice: run by torch operators
(``onnx_torch``) and by ONNX Runtime alone. For each the table gives the median wall time of loading the file, of
one forward pass over a batch of ``n`` queries, and of one input gradient over it (what DBI and pairs pay per
iteration), as ratios to the eager model, with how far its logits are from eager. Kinds are timed in turn, round
after round, so the machine's load spreads over all of them alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from nnmark.bench.common import document, header, parameters, table, write
from nnmark.bench.heldout import FACTORY, INPUT_SHAPE, NUM_CLASSES, groupnorm_gelu

FULL = {"seeds": 1, "repeats": 15, "n": 256}
QUICK = {"seeds": 1, "repeats": 2, "n": 16}
NORMALIZE = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


Loader = Callable[[], tuple[nn.Module, bool]]
"""Loads one source: (the model in pixel space, whether it gives input gradients)."""


def write_sources(net: nn.Module, folder: Path) -> dict[str, Loader]:
    """``net``'s weights in every container; kind -> its loader."""
    from safetensors.torch import save_file

    from nnmark.models import ModelCard, load_any
    from nnmark.models.card import pixel_model
    from nnmark.models.sources import OnnxRuntimeModule
    from nnmark.oracles.onnx import export

    save_file(net.state_dict(), folder / "w.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(net), folder / "net.pt")
        program = torch.export.export(net, (torch.zeros(2, *INPUT_SHAPE),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "net.pt2")
    onnx_file = folder / "net.onnx"
    onnx_file.write_bytes(export(net, INPUT_SHAPE))

    def source(spec: str, **kw) -> Loader:
        def load() -> tuple[nn.Module, bool]:
            loaded = load_any(spec, input_shape=INPUT_SHAPE, normalize=NORMALIZE, **kw)
            return loaded.model, loaded.gradients
        return load

    card = ModelCard(INPUT_SHAPE, NUM_CLASSES, normalize=NORMALIZE)
    return {
        "eager (factory + safetensors)": source(FACTORY, weights=folder / "w.safetensors"),
        "TorchScript": source(str(folder / "net.pt")),
        "torch.export": source(str(folder / "net.pt2")),
        "ONNX, torch operators": source(str(onnx_file)),
        "ONNX Runtime": lambda: (pixel_model(OnnxRuntimeModule(onnx_file.read_bytes(), onnx_file.name), card), False),
    }


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.softmax(model(x), 1)[:, 0].sum(), x)
    return g


def measure(kinds: dict[str, Loader], x: torch.Tensor, repeats: int, progress: bool = False) -> list[dict]:
    """Per kind: load, forward and gradient seconds of every round, and how far its logits are from the first's."""
    loaded = {name: load() for name, load in kinds.items()}
    with torch.no_grad():
        logits = {name: model(x) for name, (model, _) in loaded.items()}
    eager = next(iter(logits.values()))
    times = {name: {"load_s": [], "forward_s": [], "gradient_s": []} for name in kinds}
    for _ in tqdm(range(repeats), desc="sources", disable=not progress, leave=False):
        for name, load in kinds.items():
            model, gradients = loaded[name]
            times[name]["load_s"].append(_seconds(load))
            with torch.no_grad():
                times[name]["forward_s"].append(_seconds(lambda: model(x)))
            if gradients:
                times[name]["gradient_s"].append(_seconds(lambda: _gradient(model, x)))
    return [{"kind": name, **times[name], "max_abs_logit_diff": float((logits[name] - eager).abs().max()),
             "labels_agree": int((logits[name].argmax(1) == eager.argmax(1)).sum())} for name in kinds]


def _ratio(rows: list[dict], row: dict, field: str) -> str:
    if not row[field]:
        return "n/a (no gradients)"
    base = statistics.median(rows[0][field])
    return f"{statistics.median(row[field]) * 1e3:.1f} ms ({statistics.median(row[field]) / base:.2f}x)"


def render(result: dict) -> str:
    rows, n = result["rows"], result["params"]["n"]
    return document(
        "# Model sources: the same weights in each container",
        f"`{result['command']}` ({result['date']}); {result['params']['repeats']} rounds, every kind in turn; median "
        f"wall time and its ratio to the eager model; a batch of {n} RGB 32x32 queries; torch threads: "
        f"{result['threads']}.",
        table(["source", "load", f"forward ({n})", f"input gradient ({n})", "max abs logit diff to eager",
               f"labels agree (of {n})"],
              [[r["kind"], _ratio(rows, r, "load_s"), _ratio(rows, r, "forward_s"), _ratio(rows, r, "gradient_s"),
                f"{r['max_abs_logit_diff']:.1e}", r["labels_agree"]] for r in rows], align="lrrrrr"),
    )


def run(*, quick: bool = False, seeds: int | None = None, out_dir: str | Path = "docs/benchmarks",
        progress: bool = False) -> Path:
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    torch.manual_seed(0)
    net = groupnorm_gelu().eval()
    x = torch.rand(p["n"], *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="nnmark-bench-sources-") as tmp:
        rows = measure(write_sources(net, Path(tmp)), x, p["repeats"] * p["seeds"], progress)
    result = {**header("sources", p, quick=quick, seeds=seeds), "threads": torch.get_num_threads(), "rows": rows}
    return write(out_dir, "sources", result, render(result))
