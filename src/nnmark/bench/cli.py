"""``nnmark bench cli``: cold-start time of the command line, side by side with a bare ``import torch``.

Each command runs as a fresh process, ``repeats`` times in turn (so the machine's load spreads over all of
them alike); the table gives the median wall time and its ratio to the baseline in the same run:

- ``python -c "import torch"``: what any command that touches a model pays at least;
- ``nnmark --help`` and ``nnmark --version``: should import no torch (goal: at most 10% of the baseline);
- ``models.load`` of a LeNet-5 checkpoint;
- ``nnmark verify`` of a 100-query DBI key on that checkpoint, against the floor of importing torch,
  loading the weights and one forward pass over the 100 queries (goal: at most 1.5x that floor).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from nnmark.bench.common import header, parameters, table, write

FULL = {"seeds": 1, "repeats": 7, "n": 100}
QUICK = {"seeds": 1, "repeats": 1, "n": 20}
SECRET = b"bench cli secret"


def _fixture(folder: Path, n: int) -> tuple[Path, Path, Path]:
    """A LeNet-5 checkpoint trained one epoch, a DBI key of ``n`` queries on it, and the secret file."""
    import torch

    from nnmark import data, keys, models
    from nnmark.marks.integrity import dbi
    from nnmark.oracles import TorchOracle

    ds = data.load("mnist5k")
    torch.manual_seed(0)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=1, seed=0)
    model_path, key_path, secret_path = folder / "lenet5.safetensors", folder / "dbi.key", folder / "secret"
    models.save(model, models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="mnist5k"), model_path)
    key = dbi.create(TorchOracle(model, ds.shape), ds.train.x[:n], itr=10, model_digest=models.digest(model))
    keys.save(key, key_path, secret=SECRET)
    secret_path.write_bytes(SECRET)
    return model_path, key_path, secret_path


def commands(model: Path, key: Path, secret: Path, n: int) -> dict[str, list[str]]:
    """The measured command lines, baseline first."""
    py = sys.executable
    floor = ("import torch; from safetensors.torch import load_file; from nnmark.models.lenet import LeNet5; "
             f"m = LeNet5((1, 28, 28), 10); m.load_state_dict(load_file({str(model)!r})); "
             f"m.eval(); m(torch.rand({n}, 1, 28, 28))")
    return {
        "python -c 'import torch'": [py, "-c", "import torch"],
        "nnmark --help": [py, "-m", "nnmark", "--help"],
        "nnmark --version": [py, "-m", "nnmark", "--version"],
        "models.load (LeNet-5)": [py, "-c", f"from nnmark import models; models.load({str(model)!r})"],
        f"import torch + load + one forward of {n}": [py, "-c", floor],
        f"nnmark verify ({n}-query DBI key)": [py, "-m", "nnmark", "verify", str(key), "--model", str(model),
                                               "--secret-file", str(secret)],
    }


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def measure(cmds: dict[str, list[str]], repeats: int, progress: bool = False) -> dict[str, list[float]]:
    """Wall seconds of each command, ``repeats`` rounds of every command in turn."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in tqdm(range(repeats), desc="cold starts", disable=not progress, leave=False):
        for name, argv in cmds.items():
            times[name].append(_time(argv))
    return times


def render(result: dict) -> str:
    rows = result["rows"]
    base = rows[0]["median_s"]
    lines = [
        "# CLI cold start", "",
        f"`{result['command']}` ({result['date']}); {result['params']['repeats']} runs of each command, in turn, "
        "each a fresh process; median wall time.", "",
        table(["command", "median s", "ratio to import torch"],
              [[f"`{r['name']}`", f"{r['median_s']:.2f}", f"{r['median_s'] / base:.2f}"] for r in rows]),
        "",
        f"Goals: `nnmark --help` at most 0.10 of `import torch` (measured {result['help_ratio']:.2f}); `nnmark "
        f"verify` at most 1.5x importing torch, loading the weights and one forward pass (measured "
        f"{result['verify_ratio']:.2f}x).", "",
    ]
    return "\n".join(lines)


def run(*, quick: bool = False, seeds: int | None = None, out_dir: str | Path = "docs/benchmarks",
        progress: bool = False) -> Path:
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    with tempfile.TemporaryDirectory(prefix="nnmark-bench-cli-") as tmp:
        model, key, secret = _fixture(Path(tmp), p["n"])
        cmds = commands(model, key, secret, p["n"])
        times = measure(cmds, p["repeats"] * p["seeds"], progress)
    rows = [{"name": name, "median_s": statistics.median(t), "runs_s": t} for name, t in times.items()]
    median = {r["name"]: r["median_s"] for r in rows}
    names = list(cmds)
    result = {**header("cli", p, quick=quick, seeds=seeds), "rows": rows,
              "help_ratio": median[names[1]] / median[names[0]], "verify_ratio": median[names[5]] / median[names[4]]}
    return write(out_dir, "cli", result, render(result))
