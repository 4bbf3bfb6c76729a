"""``nnmark bench telltale``: iNNformant (Schlögl et al.) Tables 2-3, Fig. 5, cost, identify, transparency.

Cases: LeNet-5 and ResNet-20 at width 0.5 (8/16/32 channels, to fit one CPU core) on mnist5k (the
paper: ResNet-20 on FMNIST, ResNet-32 on CIFAR-10; CIFAR-10 is not part of this benchmark). Four
environments that differ on this machine stand in for the paper's four CPU microarchitectures
(1 vs n, n = 4): float32 (the reference and the white-box local oracle), float64, ONNX Runtime
(ORT_ENABLE_ALL) and torch float32 with oneDNN capped to SSE4.1 (a worker subprocess). For each case:

- Table 2: success rate of ``innformant.create`` (paper defaults: alpha 1e-4 local / 2e-4 remote,
  target 1e-6, local_max 2000, remote_max 500, sign steps) over the starting test images, and which
  environment each kept sample singles out.
- Table 3: PSNR quantiles of the kept samples, and the minimum PSNR of a fully identifying set built
  from the best (highest-PSNR) sample for each environment.
- Fig. 5 (PNG): local and remote steps per kept sample.
- Cost: wall time and queries (all oracles) per success, batched (all images advance together) vs one
  image at a time on the first ``cost_n`` images, and their ratio.
- Confusion: the key is signed and saved, each environment serves the model through ``nnmark serve
  --env`` in a subprocess on a free port, and ``nnmark identify KEY --endpoint URL --json`` says which
  environment answered.
- Transparency: the DeepFool limit (``minimal.deepfool``: the closest boundary point found, the
  highest PSNR any boundary sample of the image can have) and the sign-direction limit
  (``minimal.sign_minimal``) on the same images, beside our samples before and after
  ``minimal.refine`` (moved toward the source while singling out the same environment: bisection back
  along the path and line searches toward the DeepFool point), and the samples ``minimal.line_search``
  finds on the line through the DeepFool point alone (a better base algorithm).

Full settings: 400 starting images for LeNet-5 (as the paper), 100 for ResNet-20 (cut to fit about
40 minutes on one loaded core), cost on 8 / 4 images, one seed (the model's training seed), servers
started as ``python -m nnmark serve --env NAME`` subprocesses on free ports.
Quick: LeNet-5 only (1 epoch), 8 images, cost on 2 images, local_max 300 and remote_max 100, and the
servers run in threads of this process (``nnmark.serve.serving`` of the app ``nnmark serve`` builds:
the same server code without a new Python and torch per environment, which costs ~30 s each here).
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nnmark import data, envs, keys, models
from nnmark.bench import plots
from nnmark.bench.common import document, header, parameters, section, table, write
from nnmark.errors import NnmarkError
from nnmark.marks.telltale import innformant, minimal
from nnmark.metrics import psnr

SECRET = b"nnmark-bench-secret"
ENVIRONMENTS = ("float32", "float64", "onnxruntime", "onednn-sse41")
FULL = {
    "seeds": 1, "environments": ENVIRONMENTS, "local_max": 2000, "remote_max": 500, "serve": "subprocess",
    "cases": (
        {"arch": "lenet5", "width": 1.0, "epochs": 4, "n": 400, "cost_n": 8},
        {"arch": "resnet20", "width": 0.5, "epochs": 2, "n": 100, "cost_n": 4},
    ),
}
QUICK = {
    "seeds": 1, "environments": ENVIRONMENTS, "local_max": 300, "remote_max": 100, "serve": "thread",
    "cases": ({"arch": "lenet5", "width": 1.0, "epochs": 1, "n": 8, "cost_n": 2},),
}
PAPER = {"success": {"FMNIST": 70.5, "CIFAR10": 28.25}, "psnr_median": {"FMNIST": 50.10, "CIFAR10": 85.76},
         "set_min_psnr": {"FMNIST": 70.93, "CIFAR10": 77.05}}


TRANSPARENCY = (
    "Median PSNR (dB). Limit: DeepFool's closest boundary point (bisected onto the boundary) of the same "
    "source images, the highest PSNR a boundary sample of them can have (an estimate); sign limit: the "
    "closest boundary point along sign(grad m), the direction of eq. 2. Refined: our samples moved back "
    "toward their sources while singling out the same environment (`minimal.refine`: bisection back "
    "along the path, and line searches through points between the DeepFool point and the sample); gap: "
    "limit minus our PSNR, per sample. Line search: boundary samples "
    "searched on the line through the DeepFool point (its success rate over all starting images).")
"""How to read the transparency table."""
AGAINST_THE_PAPER = (
    "Success and the spread over environments are read against Table 2 (70.5% FMNIST / ResNet-20, all four "
    "MAs singled out); PSNR against Table 3 (median 50.1 dB, sets above 70 dB). Where our median PSNR lies "
    "below the paper's, compare it with the DeepFool limit of the same images: no boundary sample of an "
    "image can have a higher PSNR than its closest boundary point, so a paper-like 45-50 dB median is out "
    "of reach for models whose limit is lower.")
"""How to read the comparison with the paper."""


def _quantiles(values: list[float]) -> dict:
    """min, Q1, median, mean, Q3, max of ``values`` (None for an empty list)."""
    if not values:
        return {k: None for k in ("min", "q1", "median", "mean", "q3", "max")}
    t = torch.tensor(values, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"min": min(values), "q1": q[0], "median": q[1], "mean": statistics.mean(values), "q3": q[2],
            "max": max(values)}


def _oracles(model, shape, names) -> dict:
    return {name: envs.get(name).oracle(model, shape) for name in names}


def _close(oracles: dict) -> None:
    for o in oracles.values():
        o.close()


def _queries(local, oracles) -> int:
    return local.queries + sum(o.queries for o in oracles.values())


def _create(local, oracles, x, p):
    """``innformant.create`` with the bench's settings; None when no sample was found."""
    try:
        return innformant.create(local, oracles, x, local_max=p["local_max"], remote_max=p["remote_max"])
    except NnmarkError:
        return None


def _cost(model, shape, x, p) -> dict:
    """Wall time and queries of one batched run vs one run per image on the same images."""
    out = {}
    for mode in ("batched", "one at a time"):
        local = envs.get("float32").oracle(model, shape)
        oracles = _oracles(model, shape, p["environments"])
        start = time.perf_counter()
        if mode == "batched":
            key = _create(local, oracles, x, p)
            found = 0 if key is None else len(key.queries)
        else:
            found = sum(_create(local, oracles, x[i : i + 1], p) is not None for i in range(len(x)))
        out[mode] = {"seconds": time.perf_counter() - start, "queries": _queries(local, oracles), "successes": found}
        _close(oracles)
    for mode in out.values():
        mode["seconds_per_success"] = mode["seconds"] / mode["successes"] if mode["successes"] else None
        mode["queries_per_success"] = mode["queries"] / mode["successes"] if mode["successes"] else None
    out["time_ratio"] = out["one at a time"]["seconds"] / out["batched"]["seconds"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _served(checkpoint: Path, env: str):
    """``nnmark serve --model CHECKPOINT --env ENV`` in a subprocess; yields its URL once ready (or None)."""
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "nnmark", "serve", "--model", str(checkpoint), "--env", env,
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url if server.poll() is None else None
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()


@contextlib.contextmanager
def _served_in_thread(model, config, env: str):
    """The app ``nnmark serve --env ENV`` builds, served from a thread of this process; yields its URL."""
    from nnmark import serve

    oracle = envs.get(env).oracle(model, tuple(config.input_shape))
    try:
        with serve.serving(serve.create_app(oracle, model_name="model")) as url:
            yield url
    finally:
        _close({env: oracle})


def _confusion(model, config, key, names, how: str) -> dict:
    """For each environment served by ``nnmark serve`` (``how``: "subprocess" or "thread"): what
    ``nnmark identify --endpoint --json`` said."""
    from click.testing import CliRunner

    from nnmark.cli import main

    out = {}
    with tempfile.TemporaryDirectory(prefix="nnmark-bench-") as tmp:
        checkpoint, key_path, secret = Path(tmp, "model.safetensors"), Path(tmp, "key.nnmk"), Path(tmp, "secret")
        models.save(model, config, checkpoint)
        keys.save(key, key_path, secret=SECRET)
        secret.write_bytes(SECRET)
        for env in names:
            server = _served(checkpoint, env) if how == "subprocess" else _served_in_thread(model, config, env)
            with server as url:
                if url is None:
                    out[env] = {"decision": "nnmark serve could not serve this environment", "exit_code": None}
                    continue
                result = CliRunner().invoke(main, ["identify", str(key_path), "--endpoint", url, "--secret-file",
                                                   str(secret), "--json"])
            try:
                answer = json.loads(result.output)
                out[env] = {"decision": answer["decision"], "exit_code": result.exit_code,
                            "match_table": answer["details"]["match_table"]}
            except (ValueError, KeyError):
                out[env] = {"decision": f"identify failed: {result.output.strip()[:200]}", "exit_code": result.exit_code}
    return out


@contextlib.contextmanager
def _timed(stages: dict[str, float], name: str):
    """Record the wall seconds of the block in ``stages[name]``."""
    start = time.perf_counter()
    yield
    stages[name] = time.perf_counter() - start


def _train(case: dict, ds: data.Dataset) -> tuple[torch.nn.Module, models.ModelConfig]:
    """The case's model, trained with seed 0, in eval mode, and its config (with its test accuracy)."""
    torch.manual_seed(0)
    model = models.build(case["arch"], ds.shape, ds.num_classes, width=case["width"])
    models.train(model, ds.train, epochs=case["epochs"], seed=0)
    model.eval()
    config = models.ModelConfig(case["arch"], ds.shape, ds.num_classes, width=case["width"], data="mnist5k",
                                accuracy=models.accuracy(model, ds.test), seed=0)
    return model, config


def _successes(rows: list[dict], n: int, names: list[str]) -> dict:
    """Table 2's numbers, from ``innformant.report``'s rows of a key made from ``n`` images: the successes and
    how many single out each environment."""
    return {"successes": len(rows), "success_rate": len(rows) / n,
            "singles_out": {name: sum(name in r["singles_out"] for r in rows) for name in names}}


def _psnr_stats(rows: list[dict], names: list[str]) -> dict:
    """Table 3's numbers: PSNR quantiles of the kept samples, the best per environment, and that set's minimum."""
    best = {name: max((r["psnr"] for r in rows if name in r["singles_out"]), default=None) for name in names}
    found = [v for v in best.values() if v is not None]
    return {"psnr": _quantiles([r["psnr"] for r in rows]), "best_per_env": best,
            "set_min_psnr": min(found) if found else None, "set_complete": len(found) == len(names)}


def _line_search(oracles: dict, x: torch.Tensor, limit) -> tuple[torch.Tensor, list[float], list[int]]:
    """Boundary samples on the line through each DeepFool point: which images succeeded, their PSNRs, and how
    many single out each environment."""
    through = (x.double() + 2 * (limit.samples.double() - x.double())).clamp(0, 1).float()
    line, ok = minimal.line_search(oracles, x, through)
    ok &= limit.success
    labels = torch.stack([o.labels(line[ok]) for o in oracles.values()], dim=1)
    singles = innformant.singled_out(labels).bincount(minlength=len(oracles)).tolist() if ok.any() \
        else [0] * len(oracles)
    return ok, psnr(line[ok], x[ok]).tolist(), singles


def _transparency(local, oracles: dict, x: torch.Tensor, key, stages: dict[str, float]) -> dict:
    """Our samples against the DeepFool and sign-direction limits, refined, and the line search (timed in
    ``stages``)."""
    sources, index, psnrs = key.extras["sources"], key.extras["source_index"], key.extras["psnr"]
    ours = psnrs.tolist()
    with _timed(stages, "limits"):
        limit = minimal.deepfool(local, x)
        sign = minimal.sign_minimal(local, x)
        limit_psnr = psnr(limit.samples, x)
    with _timed(stages, "refine"):
        refined = minimal.refine(oracles, sources, key.queries, through=limit.samples[index])
        refined_psnr = psnr(refined, sources).tolist()
    with _timed(stages, "line_search"):
        line_ok, line_psnr, line_singles = _line_search(oracles, x, limit)
    return {
        "ours": _quantiles(ours),
        "refined": _quantiles(refined_psnr),
        "refined_gain_median": statistics.median([a - b for a, b in zip(refined_psnr, ours)]),
        "refined_improved": sum(a > b for a, b in zip(refined_psnr, ours)),
        "limit_same_images": _quantiles(limit_psnr[index].tolist()),
        "gap_to_limit_median": statistics.median((limit_psnr[index] - psnrs).tolist()),
        "gap_after_refine_median": statistics.median(
            (limit_psnr[index] - torch.tensor(refined_psnr, dtype=torch.float64)).tolist()),
        "limit_all": _quantiles(limit_psnr[limit.success].tolist()),
        "limit_success_rate": limit.success.double().mean().item(),
        "sign_limit_all": _quantiles(psnr(sign.samples[sign.success], x[sign.success]).tolist()),
        "deepfool_smaller_than_sign": ((limit.l2 < sign.l2) | ~sign.success)[limit.success].double().mean().item(),
        "line_success_rate": line_ok.double().mean().item(),
        "line": _quantiles(line_psnr),
        "line_singles_out": dict(zip(oracles, line_singles)),
    }


def run_case(case: dict, p: dict, ds: data.Dataset, progress: bool) -> dict:
    """One model: train it, make the key, and measure every table's numbers."""
    model, config = _train(case, ds)
    x = ds.test.x[: case["n"]]
    names = list(p["environments"])
    local = envs.get("float32").oracle(model, ds.shape)
    oracles = _oracles(model, ds.shape, names)
    stages: dict[str, float] = {}
    with _timed(stages, "innformant"):
        key = innformant.create(local, oracles, x, local_max=p["local_max"], remote_max=p["remote_max"],
                                progress=progress)
    queries = _queries(local, oracles)
    rows = innformant.report(key)
    transparency = _transparency(local, oracles, x, key, stages)
    _close(oracles)
    with _timed(stages, "cost"):
        cost = _cost(model, ds.shape, x[: case["cost_n"]], p)
    with _timed(stages, "confusion"):
        confusion = _confusion(model, config, key, names, p["serve"])
    return {
        "arch": case["arch"], "width": case["width"], "epochs": case["epochs"], "accuracy": config.accuracy,
        "n": len(x), **_successes(rows, len(x), names), "seconds": stages["innformant"], "queries": queries,
        **_psnr_stats(rows, names),
        "local_steps": key.extras["local_steps"].tolist(), "remote_steps": key.extras["remote_steps"].tolist(),
        "psnr_values": key.extras["psnr"].tolist(), "transparency": transparency,
        "cost": cost, "confusion": confusion, "stage_seconds": stages,
    }


def _fmt(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _intro(result: dict) -> str:
    """Title and the run's settings against the paper's."""
    p, cases = result["params"], result["cases"]
    return "\n\n".join([
        "# iNNformant boundary samples (telltale)",
        f"Written by `{result['command']}` on {result['date']}. Parameters: environments "
        f"{', '.join(p['environments'])} "
        f"(reference and local white-box oracle: float32); local_max {p['local_max']}, remote_max "
        f"{p['remote_max']} (paper: 2000 / 500), alpha 1e-4 local / 2e-4 remote, target 1e-6, sign steps; "
        + "; ".join(f"{c['arch']} (width {c['width']}, {c['epochs']} epochs, test accuracy {c['accuracy']:.2%}): "
                    f"{c['n']} starting mnist5k test images, cost on {p['cost_n'][c['arch']]}" for c in cases)
        + ". The paper used 400 images per model, FMNIST/ResNet-20 and CIFAR-10/ResNet-32, and four CPU "
        "microarchitectures; here four execution environments on one CPU stand in for them, and fewer "
        "images fit the time budget of one loaded core.",
    ])


def success_table(cases: list[dict], names: list[str]) -> str:
    """Table 2: success rate, the share of successes singling out each environment, failure rate (%)."""
    body = []
    for c in cases:
        shares = [100 * c["singles_out"][n] / c["successes"] if c["successes"] else 0.0 for n in names]
        body.append([c["arch"], f"{100 * c['success_rate']:.1f}", *(f"{s:.1f}" for s in shares),
                     f"{100 * (1 - c['success_rate']):.1f}"])
    return table(["model", "success %", *names, "failure %"], body, align="l" + "r" * (len(names) + 2))


def psnr_table(cases: list[dict]) -> str:
    """Table 3: PSNR quantiles of the kept samples, and the minimum PSNR of the best-per-environment set."""
    stats = ("min", "q1", "median", "mean", "q3", "max")
    return table(["model", "min", "Q1", "median", "mean", "Q3", "max", "set min PSNR", "set complete"],
                 [[c["arch"], *(_fmt(c["psnr"][k]) for k in stats), _fmt(c["set_min_psnr"]),
                   "yes" if c["set_complete"] else "no"] for c in cases], align="lrrrrrrrl")


def steps_table(cases: list[dict]) -> str:
    """Fig. 5's medians and maxima of the local and remote steps."""
    body = []
    for c in cases:
        ls, rs = c["local_steps"] or [0], c["remote_steps"] or [0]
        body.append([c["arch"], f"{statistics.median(ls):g}, {max(ls)}", f"{statistics.median(rs):g}, {max(rs)}"])
    return table(["model", "local steps (median, max)", "remote steps (median, max)"], body, align="lrr")


def cost_table(cases: list[dict], cost_n: dict[str, int]) -> str:
    """Wall time and queries per success, batched and one image at a time, and their time ratio."""
    body = []
    for c in cases:
        for mode in ("batched", "one at a time"):
            m = c["cost"][mode]
            body.append([c["arch"], mode, cost_n[c["arch"]], m["successes"], f"{m['seconds']:.1f}",
                         _fmt(m["seconds_per_success"], 2), _fmt(m["queries_per_success"], 0)])
        body.append([c["arch"], "ratio (one at a time / batched)", "", "", f"{c['cost']['time_ratio']:.1f}x", "", ""])
    return table(["model", "mode", "images", "successes", "seconds", "s / success", "queries / success"], body,
                 align="llrrrrr")


def confusion_table(cases: list[dict]) -> str:
    """What ``nnmark identify --endpoint`` said of each served environment."""
    return table(["model", "served environment", "identify said", "exit code"],
                 [[c["arch"], env, a["decision"], a["exit_code"]] for c in cases for env, a in c["confusion"].items()],
                 align="lllr")


def transparency_table(cases: list[dict]) -> str:
    """Median PSNRs of our samples, refined ones, the limits and the line search."""
    body = []
    for c in cases:
        t = c["transparency"]
        body.append([c["arch"], _fmt(t["ours"]["median"]), _fmt(t["refined"]["median"]),
                     _fmt(t["limit_same_images"]["median"]),
                     f"{_fmt(t['gap_to_limit_median'])} / {_fmt(t['gap_after_refine_median'])}",
                     _fmt(t["limit_all"]["median"]), _fmt(t["sign_limit_all"]["median"]),
                     f"{100 * t['deepfool_smaller_than_sign']:.0f}%", f"{100 * t['line_success_rate']:.1f}",
                     _fmt(t["line"]["median"])])
    return table(["model", "ours", "refined", "limit (same images)", "gap before / after refine",
                  "DeepFool limit (all)", "sign limit (all)", "DeepFool < sign L2", "line search success %",
                  "line search PSNR"], body, align="l" + "r" * 9)


def _transparency_summary(cases: list[dict]) -> str:
    """How many samples refinement improved, and whom the line search's samples single out."""
    return ("Refinement raised the PSNR of " + "; ".join(
        f"{c['arch']}: {c['transparency']['refined_improved']} of {c['successes']} samples" for c in cases)
        + ". Line search: environments singled out: " + "; ".join(
        f"{c['arch']}: " + ", ".join(f"{k} {v}" for k, v in c["transparency"]["line_singles_out"].items())
        for c in cases) + ".")


def paper_table(cases: list[dict], names: list[str]) -> str:
    """Success, coverage of the environments and PSNRs beside the paper's Tables 2 and 3."""
    return table(["model", "success % (paper 70.5)", "environments singled out", "median PSNR (paper 50.1)",
                  "DeepFool limit median", "set min PSNR (paper 70.9)"],
                 [[c["arch"], f"{100 * c['success_rate']:.1f}",
                   f"{sum(v > 0 for v in c['singles_out'].values())} of {len(names)}", _fmt(c["psnr"]["median"]),
                   _fmt(c["transparency"]["limit_all"]["median"]), _fmt(c["set_min_psnr"])] for c in cases],
                 align="lrrrrr")


def render(result: dict) -> str:
    """The Markdown report of a run."""
    p, cases = result["params"], result["cases"]
    names = list(p["environments"])
    where = ("in a `nnmark serve --env` subprocess" if p["serve"] == "subprocess"
             else "from a thread running the app `nnmark serve` builds")
    return document(
        _intro(result),
        section("Table 2: success and the environment each success singles out",
                "Share of starting images that gave a kept boundary sample, and of the successes, the share "
                f"singling out each environment (paper: {PAPER['success']['FMNIST']}% FMNIST, "
                f"{PAPER['success']['CIFAR10']}% CIFAR-10).", success_table(cases, names)),
        section("Table 3: PSNR of the kept samples (dB)",
                "PSNR of each kept sample against its source image, and the minimum PSNR of a fully identifying "
                "set made of the best sample per environment (paper: median 50.1 dB FMNIST, sets above 70 dB).",
                psnr_table(cases)),
        section("Figure 5: steps per sample",
                "innformant.png: box plots of the local and remote steps of the kept samples, and PSNR against "
                "local steps. Medians:", steps_table(cases)),
        section("Cost: batched vs one image at a time",
                "Wall time and queries (local gradients plus every environment's labels and probabilities) per "
                "success, for the same images made in one batched run and in one run per image.",
                cost_table(cases, p["cost_n"])),
        section("Confusion: `nnmark identify --endpoint` against `nnmark serve --env`",
                f"Each environment serves the model ({where}); the key (all kept samples) is asked over HTTP and "
                "`identify` names the environment(s) whose recorded labels all match.", confusion_table(cases)),
        section("Transparency: our samples vs the minimal-perturbation limit", TRANSPARENCY,
                transparency_table(cases), _transparency_summary(cases)),
        section("Against the paper", AGAINST_THE_PAPER, paper_table(cases, names)),
    )


def figure(result: dict) -> bytes:
    """innformant.png (Fig. 5 layout): local and remote steps per kept sample, and PSNR against local steps."""
    return plots.boundary_steps(result["cases"])


def run(*, quick: bool, seeds: int | None, out_dir, progress: bool = False) -> Path:
    """Run the benchmark and write innformant.md, .json and .png to ``out_dir``; returns the Markdown path.

    ``seeds`` is accepted for the common bench interface; this benchmark trains one model per case (seed 0).
    """
    p = parameters(FULL, QUICK, quick=quick, seeds=seeds)
    ds = data.load("mnist5k")
    cases = [run_case(case, p, ds, progress) for case in p["cases"]]
    p = {**p, "cost_n": {c["arch"]: c["cost_n"] for c in p["cases"]}}
    result = {**header("telltale", p, quick=quick, seeds=seeds), "paper": PAPER, "cases": cases}
    return write(out_dir, "innformant", result, render(result), figure(result))
