"""Every documented command line runs through the CLI and does what the docs say.

The documented lines are each ``Example:`` of ``nnmark ... --help`` (every command and subcommand) and each
``nnmark`` line of the README's sh blocks (``\\`` continuations joined, ``&`` and trailing ``# comments`` cut).
``STEPS`` runs them in one walk-through in a temporary folder, in its order, each shrunk where the documented
settings take minutes (``Step.shrink``, written out per line). A line passes when it exits as its README comment
says ("TAMPERED, exit 1": the code, and the verdict word in its output), else with 0. ``nnmark serve`` lines run as
subprocesses on free ports (the documented ports are replaced in every later line); the endpoints no ``nnmark serve``
can be (a Triton-shaped model, a model that takes normalised input) are small OIP v2 servers shaped that way.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import click
import httpx
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastapi import FastAPI, Request, Response
from PIL import Image

import nnmark
from nnmark import models
from nnmark.cli import main
from nnmark.oracles import oip
from nnmark.serve import serving
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(nnmark.__file__).resolve().parents[1]
HOST = "127.0.0.1"
SECRET = "a long random secret\n"  # as the README's first line writes it
TOKEN = "a-test-bearer-token\n"
STARTUP_TIMEOUT = 120.0
POLL_INTERVAL = 0.2
STOP_TIMEOUT = 10.0
EXPECTED = re.compile(r"^(?:(?P<word>[\w. -]+?), )?exit (?P<code>[012])$")
"""A README comment that states the outcome: "INTACT, exit 0", "float64, exit 1"."""
KEY_DIR_KEYS = ("dbi.key", "pairs.key", "finger.key", "ipguard.key", "telltale.key")
"""What ``keys/`` holds: an owner's integrity, ownership and telltale keys, made by earlier lines."""
NETS_PY = '''"""A user's own model: a small CNN for RGB 32x32 images."""
from torch import nn


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 10))
'''
PHOTOS_PER_CLASS = 150
"""Enough for the user's small CNN to label some test photos with confidence >= 0.99 (the key's canaries)."""
WRITES = ("--out", "--out-model", "--report", "--log", "--out-dir")


# --- the documented lines -------------------------------------------------------------------------------------


def _command_line(text: str) -> str:
    """One shell line as nnmark's words, one space apart, quoted where a word needs it: ``&`` and a trailing comment
    cut."""
    words = shlex.split(text, comments=True)
    return shlex.join(words[:-1] if words and words[-1] == "&" else words)


def readme_lines(text: str | None = None) -> dict[str, str]:
    """Each ``nnmark`` line of the README's sh blocks -> its trailing comment ("" without one)."""
    text = (ROOT / "README.md").read_text() if text is None else text
    lines: dict[str, str] = {}
    for block in re.findall(r"^ *```sh\n(.*?)^ *```", text, re.S | re.M):
        for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
            if raw.strip().startswith("nnmark "):
                comment = raw.split(" #", 1)[1].strip() if " #" in raw else ""
                lines[_command_line(raw)] = comment
    return lines


def _commands(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1])
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))


def help_examples() -> dict[str, set[str]]:
    """Each line under ``Example:`` in the --help of every command and subcommand -> the commands showing it."""
    found: dict[str, set[str]] = {}
    for path in _commands(main, ("nnmark",)):
        out = CliRunner().invoke(main, [*path[1:], "--help"])
        assert out.exit_code == 0, (path, out.output)
        for block in re.findall(r"^ *Example:\n(.*?)(?:\n\s*\n|\Z)", out.stdout, re.S | re.M):
            for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
                found.setdefault(_command_line(raw), set()).add(" ".join(path))
    return found


def documented_lines() -> set[str]:
    return set(help_examples()) | set(readme_lines())


def expectation(line: str) -> tuple[int, str | None]:
    """(exit code, verdict word or None) the docs promise for ``line``: its README comment's, else (0, None)."""
    match = EXPECTED.match(readme_lines().get(line, ""))
    return (int(match["code"]), match["word"]) if match else (0, None)


# --- files and servers the lines need that no documented line makes -------------------------------------------


def write_inputs(work: Path, mnist) -> None:
    """The secret, token and clients files, a user's package ``mypkg`` and a ``photos`` folder of one subfolder per
    class."""
    (work / "secret").write_text(SECRET)
    (work / "token").write_text(TOKEN)
    (work / "clients").write_text("alice tok-alice\nbob tok-bob\n")
    (work / "mypkg").mkdir()
    (work / "mypkg" / "__init__.py").write_text("")
    (work / "mypkg" / "nets.py").write_text(NETS_PY)
    for label in range(mnist.num_classes):
        folder = work / "photos" / str(label)
        folder.mkdir(parents=True)
        images = mnist.train.x[mnist.train.y == label][:PHOTOS_PER_CLASS]
        for i, x in enumerate(images):
            Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")


def fill_key_dir(work: Path) -> None:
    (work / "keys").mkdir()
    for name in KEY_DIR_KEYS:
        shutil.copy2(work / name, work / "keys" / name)


def watch_fleet(work: Path) -> None:
    """``fleet.toml`` for the watch: the trained model as a local target, asked with the DBI key."""
    (work / "fleet.toml").write_text('[[target]]\nname = "local"\nmodel = "lenet5.safetensors"\n'
                                     'keys = ["dbi.key"]\ninterval = "1h"\n')


def _raw_factory_model(work: Path) -> torch.nn.Module:
    """The user's ``small_cnn`` with the trained weights, without the normalisation its card adds."""
    return models.load_any("mypkg.nets:small_cnn", weights=str(work / "net.safetensors")).module


def export_onnx(work: Path) -> None:
    """``net.onnx``: the user's own export of the trained ``small_cnn`` (its input normalised, as the card says)."""
    from nnmark.oracles.onnx import export

    (work / "net.onnx").write_bytes(export(_raw_factory_model(work).eval(), (3, 32, 32)))


def shaped_server(model: torch.nn.Module, chw: tuple[int, int, int], *, input_name: str, layout: str, dtype: str,
                  output_name: str, kind: str) -> FastAPI:
    """An OIP v2 server as deployments shape models (any model name and version): one input tensor and one output
    of ``kind`` ("logits" or "probabilities") computed by ``model`` from the tensor as sent (UINT8: pixels / 255)."""
    app = FastAPI()
    c, h, w = chw
    dims = [-1, c, h, w] if layout == "NCHW" else [-1, h, w, c]
    meta = {"platform": "test", "inputs": [{"name": input_name, "datatype": dtype, "shape": dims}],
            "outputs": [{"name": output_name, "datatype": "FP32", "shape": [-1, 10]}]}

    @app.get("/v2")
    async def server():
        return {"name": "shaped", "version": "0", "extensions": []}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str = "1"):
        return {"name": name, "versions": [version], **meta}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = "1"):
        req = oip.decode_request(await request.body(), request.headers.get(oip.HEADER_LENGTH))
        x = torch.from_numpy(req.inputs[input_name].astype(np.float32))
        x = x.permute(0, 3, 1, 2) if layout == "NHWC" else x
        x = x / 255 if dtype == "UINT8" else x
        with torch.no_grad():
            z = model(x.contiguous())
        answer = (z if kind == "logits" else torch.softmax(z, 1)).numpy()
        content, headers = oip.encode_response(name, {output_name: answer}, request_id=req.id,
                                               binary={output_name} if req.wants_binary(output_name) else set())
        return Response(content, headers=headers)

    return app


def triton_server(work: Path) -> FastAPI:
    """Triton's PyTorch naming: UINT8 NHWC pixels in ``input__0``, raw logits out of ``output__0``."""
    model = models.load(work / "lenet5.safetensors")[0].eval()
    return shaped_server(model, (1, 28, 28), input_name="input__0", layout="NHWC", dtype="UINT8",
                         output_name="output__0", kind="logits")


def normalised_server(work: Path) -> FastAPI:
    """The user's ``small_cnn`` exported for ImageNet-normalised input: the client normalises."""
    return shaped_server(_raw_factory_model(work).eval(), (3, 32, 32), input_name="input", layout="NCHW",
                         dtype="FP32", output_name="probabilities", kind="probabilities")


# --- the walk-through -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """How one documented line runs.

    Attributes:
        shrink: ``--option value`` pairs (or flags) that replace the documented value, or are added, so the line
            takes seconds; "" runs it as documented.
        before: makes files the line reads that no documented line writes.
        server: a shaped server (``SHAPED``) that the line's ``127.0.0.1:8000`` means, for this line only.
        test: instead of running here, the test node that already runs this line through the CLI.
    """

    shrink: str = ""
    before: Callable[[Path], None] | None = None
    server: str | None = None
    test: str | None = None


SHAPED = {"triton": triton_server, "normalised": normalised_server}
PAIRS = "--n-pairs 6 --max-itr 100 --alpha 1e-5 --max-steps 500"
INNFORMANT = "--n 20 --remote-max 200"
METAFINGER = ("--n 20 --candidates 60 --negatives 2 --val-negatives 2 --af 1 --shadow-epochs 2 --finetune-epochs 1 "
              "--epochs 10 --executor serial")
SAC = "--negatives 2 --val-negatives 2 --af 0 --scratch-negatives 4 --executor serial"
HELDOUT_BENCH = "--quick --data digits --out-dir bench"
LICENSE = "--families 40 --epochs 1"
UNREAD_LICENSE = "--families 8 --epochs 1"
"""For a license line whose models and key no later line reads."""

STEPS: dict[str, Step] = {
    # The README's walk-through (and the help's train, mark and verify).
    # A line whose files no later line reads (or the next writes again) runs shrunk to the bone: what is checked of
    # it, its exit and the files it writes, is the same.
    "nnmark train --arch lenet5 --data mnist5k --epochs 8 --out lenet5.safetensors": Step("--epochs 1"),
    "nnmark train --arch lenet5 --data mnist5k --epochs 8 --seed 0 --out lenet5.safetensors": Step(),
    "nnmark mark dbi --model lenet5.safetensors --out dbi.key --secret-file secret": Step("--n 10 --itr 50"),
    "nnmark mark dbi --model lenet5.safetensors --n 100 --itr 3000 --out dbi.key --secret-file secret":
        Step("--itr 1000"),  # fragile enough that the fine-tune flips a quarter of them
    "nnmark mark natural --model lenet5.safetensors --n 100 --out natural.key --secret-file secret": Step(),
    "nnmark verify dbi.key --model lenet5.safetensors --secret-file secret": Step(),
    "nnmark verify dbi.key --model lenet5.safetensors --secret-file secret --device auto": Step(),
    "nnmark attack finetune --model lenet5.safetensors --out ft.safetensors --lr 1e-4 --steps 100": Step(),
    "nnmark attack noise --model lenet5.safetensors --out noisy.safetensors --std 1e-3": Step(),
    "nnmark verify dbi.key --model ft.safetensors --secret-file secret --json": Step(),
    # Every mark command.
    "nnmark mark random --model lenet5.safetensors --out random.key --secret-file secret": Step(),
    "nnmark mark aid --model lenet5.safetensors --n 100 --out aid.key --secret-file secret": Step("--n 10 --itr 100"),
    "nnmark mark ipguard --model lenet5.safetensors --n 100 --out ipguard.key --secret-file secret": Step(),
    "nnmark mark pairs --model lenet5.safetensors --user-id alice --out pairs.key --secret-file secret": Step(PAIRS),
    "nnmark mark pairs --model lenet5.safetensors --n-pairs 150 --user-id alice --out pairs.key --secret-file secret":
        Step(PAIRS),
    "nnmark verify pairs.key --model ft.safetensors --secret-file secret": Step(),
    "nnmark mark innformant --model lenet5.safetensors --n 50 --envs float32,float64 --out innformant.key "
    "--secret-file secret": Step(INNFORMANT),
    "nnmark mark metafinger --model lenet5.safetensors --out metafinger.key --secret-file secret": Step(METAFINGER),
    "nnmark mark metafinger --model lenet5.safetensors --out finger.key --secret-file secret": Step(METAFINGER),
    "nnmark mark sac --model lenet5.safetensors --out sac.key --secret-file secret": Step(SAC),
    "nnmark mark sac --model lenet5.safetensors --af 0 --out sac.key --secret-file secret": Step(SAC),
    "nnmark attack distill --model lenet5.safetensors --out distilled.safetensors --temperature 3": Step(),
    "nnmark verify sac.key --model distilled.safetensors --secret-file secret": Step(),
    # DAWN: the API watermarks what a thief extracts through it.
    "nnmark serve --model lenet5.safetensors --port 8003 --dawn-record wm-record --dawn-rate 0.05 --secret-file "
    "secret": Step(),
    "nnmark attack extract --endpoint http://127.0.0.1:8003 --data mnist5k@thief --student-arch lenet5 "
    "--out extracted.safetensors": Step(),
    "nnmark mark dawn --model lenet5.safetensors --record wm-record --n 100 --out dawn.key --secret-file secret":
        Step(),
    "nnmark verify dawn.key --model extracted.safetensors --secret-file secret": Step(),
    "nnmark verify dawn.key --model lenet5.safetensors --secret-file secret": Step(),
    "nnmark serve --model lenet5.safetensors --port 8004 --clients-file clients --dawn-record wm "
    "--secret-file secret": Step(),
    "nnmark verify finger.key --model ft.safetensors --secret-file secret": Step(),
    "nnmark mark adi --model lenet5.safetensors --out-model wm.safetensors --out adi.key --secret-file secret": Step(),
    "nnmark mark frontier --model lenet5.safetensors --out-model wm.safetensors --out frontier.key "
    "--secret-file secret": Step("--epochs 1"),
    "nnmark mark zhang --arch lenet5 --data mnist5k --out-model wm.safetensors --kind content --out zhang.key "
    "--secret-file secret": Step("--epochs 2"),
    "nnmark mark coupled --arch lenet5 --data mnist5k --out-model wm.safetensors --out coupled.key "
    "--secret-file secret": Step("--epochs 3"),
    "nnmark attack prune --model wm.safetensors --out pruned.safetensors --fraction 0.8": Step(),
    "nnmark verify coupled.key --model pruned.safetensors --secret-file secret": Step(),
    # Which licensee leaked it.
    "nnmark mark license --model lenet5.safetensors --out-model wm.safetensors --licensee alice --out license.key "
    "--secret-file secret": Step(UNREAD_LICENSE),
    "nnmark license --model lenet5.safetensors --licensees alice,bob,carol --out licensed --secret-file secret":
        Step(LICENSE + " --max-drop 5"),
    "nnmark license --model lenet5.safetensors --count 16 --out fleet --secret-file secret --json":
        Step(UNREAD_LICENSE + " --count 2 --max-drop 5"),
    "nnmark trace licensed/registry.key --model licensed/bob.safetensors --secret-file secret": Step(),
    "nnmark trace licensed/registry.key --model licensed/carol.safetensors --secret-file secret --json": Step(),
    "nnmark trace licensed/registry.key --model lenet5.safetensors --secret-file secret": Step(),
    "nnmark audit licensed/registry.key --model licensed/bob.safetensors --secret-file secret": Step(),
    # Every attack command.
    "nnmark attack backdoor --model lenet5.safetensors --out attacked.safetensors": Step("--max-steps 50"),
    "nnmark attack distill --model lenet5.safetensors --out attacked.safetensors": Step("--epochs 1"),
    "nnmark attack finetune --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack finetune-mode --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack adversarial --model lenet5.safetensors --out attacked.safetensors": Step("--epochs 1 --steps 5"),
    "nnmark attack extract --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack fine-prune --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack noise-finetune --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack noise --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack overwrite --model lenet5.safetensors --out attacked.safetensors --base 1 2 --target 3": Step(),
    "nnmark attack prune --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack prune-finetune --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack quantize --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack relnoise --model lenet5.safetensors --out attacked.safetensors": Step(),
    "nnmark attack transfer --model lenet5.safetensors --out attacked.safetensors": Step(),
    # Environments and telltales; every key at once on a local model.
    "nnmark envs --model lenet5.safetensors": Step(),
    "nnmark mark innformant --model lenet5.safetensors --envs float32,float64,bf16-autocast --out telltale.key "
    "--secret-file secret": Step(INNFORMANT),
    "nnmark audit dbi.key pairs.key metafinger.key innformant.key --model lenet5.safetensors --secret-file secret":
        Step(),
    # Endpoints: nnmark serve (REST and gRPC), a Triton-shaped server, a float64 server.
    "nnmark serve --model lenet5.safetensors --port 8000 --grpc-port 8001 --token-file token": Step(),
    "nnmark attack extract --endpoint http://127.0.0.1:8000 --token-file token --data mnist5k@thief "
    "--student-arch lenet5 --out stolen.safetensors": Step("--epochs 2"),
    "nnmark verify dbi.key --endpoint http://127.0.0.1:8000 --token-file token --secret-file secret": Step(),
    "nnmark verify dbi.key --endpoint http://127.0.0.1:8000 --token-file token --secret-file secret --json": Step(),
    "nnmark verify dbi.key --endpoint grpc://127.0.0.1:8001 --batch-size 64 --token-file token --secret-file secret":
        Step(),
    "nnmark verify natural.key --endpoint http://127.0.0.1:8000 --model-name resnet --model-version 2 "
    "--input-name input__0 --layout NHWC --input-dtype UINT8 --output-name output__0 --output-kind logits "
    "--secret-file secret": Step(server="triton"),
    "nnmark identify innformant.key --endpoint grpc://127.0.0.1:8001 --token-file token --secret-file secret": Step(),
    "nnmark serve --model lenet5.safetensors --env float64 --port 8002": Step(),
    "nnmark identify telltale.key --endpoint http://127.0.0.1:8002 --secret-file secret": Step(),
    # Audit: every key at once, against the nnmark serve on 8000.
    "nnmark keys ls keys/ --secret-file secret": Step(before=fill_key_dir),
    "nnmark keys show keys/dbi.key --json": Step(),
    "nnmark audit --keys keys/ --endpoint http://127.0.0.1:8000 --token-file token --secret-file secret "
    "--report audit.html --log audit.jsonl": Step(),
    "nnmark audit --keys keys/ --endpoint http://127.0.0.1:8000 --secret-file secret --token-file token "
    "--report audit.html --log audit.jsonl": Step(),
    "nnmark log verify audit.jsonl --secret-file secret": Step(),
    "nnmark audit --inventory fleet.toml --secret-file secret --report fleet.html":
        Step(test="tests/test_inventory.py::test_the_cli_audits_a_mixed_inventory_tampered_target_first"),
    # Watch: one round here; the running service (metrics, log, webhook, stopped by SIGTERM) by its own test.
    "nnmark watch --inventory fleet.toml --state watch-state --secret-file secret --once": Step(before=watch_fleet),
    "nnmark watch --inventory fleet.toml --state watch-state --secret-file secret --metrics-port 9464 "
    "--log audit.jsonl --webhook http://127.0.0.1:9095/hook":
        Step(test="tests/test_watch.py::test_the_documented_watch_runs_until_sigterm_with_metrics_log_and_webhook"),
    "nnmark mark dbi --model lenet5.safetensors --seed 7 --out dbi-2.key --secret-file secret": Step("--n 10 --itr 50"),
    # Your own model.
    "nnmark train --model mypkg.nets:small_cnn --input-shape 3,32,32 --normalize imagenet --data mnist5k "
    "--out net.safetensors": Step("--epochs 1"),
    "nnmark train --model mypkg.nets:small_cnn --input-shape 3,32,32 --normalize imagenet --data folder:photos "
    "--out net.safetensors": Step(),
    "nnmark mark dbi --model mypkg.nets:small_cnn --weights net.safetensors --input-shape 3,32,32 --normalize imagenet "
    "--data folder:photos --out dbi.key --secret-file secret": Step("--n 20 --itr 100"),
    "nnmark verify dbi.key --model net.onnx --secret-file secret": Step(before=export_onnx),
    "nnmark verify dbi.key --endpoint http://127.0.0.1:8000 --normalize imagenet --transport rest-binary "
    "--secret-file secret": Step(server="normalised"),
    # Benchmarks: a held-out model's runs here; the --quick zoo runs by their own tests.
    "nnmark bench dbi --model nnmark.bench.heldout:groupnorm_gelu --normalize imagenet --data mnist5k --seeds 1":
        Step(HELDOUT_BENCH),
    "nnmark bench integrity --model nnmark.bench.heldout:groupnorm_gelu --normalize imagenet --data mnist5k "
    "--seeds 1": Step(HELDOUT_BENCH),
    "nnmark bench dbi --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench.py::test_bench_dbi_quick_writes_its_tables"),
    "nnmark bench cli --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench.py::test_bench_cli_quick_times_every_command_beside_import_torch"),
    "nnmark bench integrity --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench_integrity.py::test_bench_integrity_quick_writes_its_tables_and_plot"),
    "nnmark bench ownership-fingerprint --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench_metafinger.py::test_bench_ownership_fingerprint_quick_writes_its_tables"),
    "nnmark bench ownership --quick --set 'watermark_thefts=[\"RTAL\"]' --out-dir /tmp/bench":
        Step(test="tests/test_bench_ownership.py::test_bench_ownership_quick_writes_its_tables"),
    "nnmark bench ownership-api --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench_ownership.py::test_bench_ownership_api_quick_writes_its_tables"),
    "nnmark bench ownership-pools --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench_metafinger.py::test_bench_ownership_pools_quick_compares_pool_designs"),
    "nnmark bench ownership-watermark --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench_coupled.py::test_quick_bench_writes_tables_json_and_plot"),
    "nnmark bench audit --quick --out-dir /tmp/bench":
        Step(test="tests/test_audit_bench.py::test_bench_audit_quick_measures_sequential_against_whole_key"),
    "nnmark bench telltale --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench_telltale.py::test_bench_telltale_quick_writes_its_tables"),
    "nnmark bench endpoints --quick --out-dir /tmp/bench":
        Step(test="tests/test_bench_endpoints.py::test_bench_endpoints_quick_measures_nnmark_serve_beside_local"),
    "nnmark bench watch --quick --out-dir /tmp/bench":
        Step(test="tests/test_watch_bench.py::test_bench_watch_quick_measures_load_swap_outage_idle_and_exposure"),
    "nnmark bench trace --quick --out-dir /tmp/bench":
        Step(test="tests/test_cli_license.py::test_bench_trace_quick_writes_its_tables"),
    "nnmark bench sources --quick --out-dir /tmp/bench":
        Step(test="tests/test_sources.py::test_bench_sources_quick_times_every_kind_on_the_same_weights"),
    "nnmark bench scale --quick --out-dir /tmp/bench":
        Step(test="tests/test_scale.py::test_bench_scale_quick_writes_its_table"),
}
RUN_HERE = [line for line, step in STEPS.items() if step.test is None]


def shrunk(line: str, shrink: str) -> list[str]:
    """The line's arguments after ``nnmark``, each option of ``shrink`` replacing the documented value or added."""
    args, changes = shlex.split(line)[1:], shlex.split(shrink)
    for i, word in enumerate(changes):
        if not word.startswith("--"):
            continue
        value = changes[i + 1:i + 2] if i + 1 < len(changes) and not changes[i + 1].startswith("--") else []
        if word not in args:
            args += [word, *value]
        elif value:
            args[args.index(word) + 1] = value[0]
    return args


def written(words: list[str]) -> list[str]:
    """The files and folders a command line (with or without ``nnmark``) names to write (``nnmark license --out
    DIR``: DIR and its registry)."""
    out = [words[i + 1] for i, w in enumerate(words[:-1]) if w in WRITES]
    command = words[1:2] if words[:1] == ["nnmark"] else words[:1]
    return out + [f"{folder}/registry.key" for folder in out if command == ["license"]]


@dataclass
class Outcome:
    """What one line did: its exit code (a server: 0 once it answers ready), its output, and the files it names
    to write that are not there after it."""

    args: list[str]
    code: int
    stdout: str
    stderr: str
    missing: list[str]


class Walkthrough:
    """Runs the lines in ``work``, keeping the documented ports' real ones and stopping every server it starts."""

    def __init__(self, work: Path, stack: contextlib.ExitStack):
        self.work, self.stack = work, stack
        self.ports: dict[str, int] = {}

    def run(self, line: str, step: Step) -> Outcome:
        args = shrunk(line, step.shrink)
        if step.before is not None:
            step.before(self.work)
        if args[0] == "serve":
            return self._serve(args)
        ports = dict(self.ports)
        if step.server is not None:
            url = self.stack.enter_context(serving(SHAPED[step.server](self.work)))
            ports["8000"] = int(url.rsplit(":", 1)[1])
        args = [re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"{HOST}:{ports.get(m[1], m[1])}", a) for a in args]
        r = CliRunner().invoke(main, args, env={"NNMARK_SECRET": None, "NNMARK_TOKEN": None})
        missing = [p for p in written(args) if not (self.work / p).exists()]
        return Outcome(args, r.exit_code, r.stdout, r.stderr, missing)

    def _serve(self, args: list[str]) -> Outcome:
        """``nnmark serve`` in a subprocess on free ports, polled until ready (bounded); stopped at teardown."""
        for option in ("--port", "--grpc-port"):
            if option in args:
                i = args.index(option) + 1
                self.ports[args[i]] = free_port()
                args[i] = str(self.ports[args[i]])
        env = {k: v for k, v in os.environ.items() if k not in ("NNMARK_SECRET", "NNMARK_TOKEN")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        port = args[args.index("--port") + 1]
        log = self.work / f"serve-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "nnmark", *args], cwd=self.work, env=env,
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.stack.callback(_stop, process)
        code = _wait_ready(process, f"http://{HOST}:{port}")
        return Outcome(args, code, "", log.read_text(), [])


def _wait_ready(process: subprocess.Popen, url: str) -> int:
    """0 once the server answers ready; its exit code if it exits first; 124 after ``STARTUP_TIMEOUT``."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for _ in range(int(STARTUP_TIMEOUT / POLL_INTERVAL)):
        if process.poll() is not None:
            return process.returncode
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return 0
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    return 124


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``STOP_TIMEOUT``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory, mnist) -> Iterator[dict[str, Outcome]]:
    """Every line of ``RUN_HERE``, in order, in one working folder: line -> its outcome."""
    work = tmp_path_factory.mktemp("documented")
    write_inputs(work, mnist)
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        walk = Walkthrough(work, stack)
        yield {line: walk.run(line, STEPS[line]) for line in RUN_HERE}


def decision(stdout: str) -> str:
    """The verdict a verify or identify prints: its JSON ``decision``, else its first line's opening words."""
    if stdout.startswith("{"):
        return json.loads(stdout)["decision"]
    return re.split(r" \(|[:;]", stdout, maxsplit=1)[0].strip().lower()


@pytest.mark.parametrize("line", RUN_HERE, ids=[f"{i:02d}-{' '.join(line.split()[1:3])}" for i, line in
                                                enumerate(RUN_HERE)])
def test_documented_line_does_what_the_docs_say(line, walkthrough):
    outcome = walkthrough[line]
    code, word = expectation(line)
    shown = f"nnmark {shlex.join(outcome.args)}\nexit {outcome.code}\n{outcome.stdout}{outcome.stderr}"
    assert outcome.code == code, shown
    assert code != 0 or not outcome.missing, f"{shown}\nnot written: {outcome.missing}"
    assert word is None or decision(outcome.stdout) == word.lower(), shown
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown


# --- the table covers the docs ----------------------------------------------------------------------------------


def test_every_documented_line_has_a_step_and_every_step_a_documented_line():
    documented = documented_lines()
    assert len(documented) > 60  # the collector finds the help examples and the README lines
    assert sorted(documented - set(STEPS)) == [], "documented lines that no test runs"
    assert sorted(set(STEPS) - documented) == [], "table entries that no doc shows"


@pytest.mark.parametrize("line", [line for line, step in STEPS.items() if step.test],
                         ids=lambda line: line.split()[2])
def test_a_bench_example_is_run_through_the_cli_by_its_own_test(line):
    path, name = STEPS[line].test.split("::")
    tree = ast.parse((ROOT / path).read_text())
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    source = ast.get_source_segment((ROOT / path).read_text(), function)
    strings = {n.value for n in ast.walk(function) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    words = shlex.split(line)[1:]
    assert "CliRunner().invoke(main" in source or "_cli(" in source, f"{name} does not run the CLI"
    for word in words:
        if word != "/tmp/bench":  # each test writes to its own temporary folder
            assert word in strings, f"{name} does not pass {word}"


def test_expectations_are_read_from_the_readme_comments():
    text = "```sh\nnnmark verify a.key --model m \\\n  --json   # TAMPERED, exit 1\nnnmark serve --port 1 &  # x\n```\n"
    assert readme_lines(text) == {"nnmark verify a.key --model m --json": "TAMPERED, exit 1",
                                  "nnmark serve --port 1": "x"}
    assert EXPECTED.match("float64, exit 1")["word"] == "float64" and EXPECTED.match("exit 2")["code"] == "2"
    assert EXPECTED.match("what runs here, how outputs differ") is None
    assert decision('{"decision": "tampered"}') == "tampered" and decision("NO MATCH: rate 10%\n") == "no match"
    assert decision("WATERMARKED (behaviour) - weights differ: x") == "watermarked"
    assert decision("float64 (reference: float32); 20 queries spent") == "float64"
    assert shrunk("nnmark mark dbi --itr 3000 --out k", "--itr 3 --quick --n 5") == [
        "mark", "dbi", "--itr", "3", "--out", "k", "--quick", "--n", "5"]


def _reads_and_writes(line: str) -> tuple[set[str], set[str]]:
    """The key files a line reads (arguments) and writes."""
    words = shlex.split(line)
    writes = set(written(words))
    return {w for w in words if w.endswith(".key") and not w.startswith("keys/")} - writes, writes


@pytest.mark.parametrize("source", ["help", "README"])
def test_every_key_a_documented_line_reads_is_one_a_line_of_the_same_doc_writes(source):
    lines = set(help_examples()) if source == "help" else set(readme_lines())
    written = set().union(*(_reads_and_writes(line)[1] for line in lines))
    unmade = {(key, line) for line in lines for key in _reads_and_writes(line)[0] if key not in written}
    assert not unmade, f"{source} reads keys no {source} line makes: {sorted(unmade)}"
