"""A user's own model (``tests/foreign_models.py``: GroupNorm + GELU, RGB 32x32, mean/std normalisation) trained,
marked, served and verified through the CLI alone, with ``nnmark serve`` a subprocess: the key records the
normalisation, the server publishes the card and normalises inside, and verify needs no format flags.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import foreign_models
from launcher import free_port, running, server_env
from nnmark.cli import main

pytestmark = pytest.mark.interop

SECRET = "a secret long enough to sign foreign keys"
FACTORY = "foreign_models:small_gn_net"
NORMALIZE = ",".join(map(str, foreign_models.MEAN_STD[0] + foreign_models.MEAN_STD[1]))
TESTS = Path(foreign_models.__file__).resolve().parent


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": SECRET})


def _serving(weights: Path, workdir: Path):
    """``nnmark serve`` of the factory with ``weights`` (the card stored with them) as model "model"."""
    http_port, grpc_port = free_port(), free_port()
    env = server_env(workdir)
    env["PYTHONPATH"] += os.pathsep + str(TESTS)  # the factory's module, as a user's own code would be
    argv = [sys.executable, "-m", "nnmark", "serve", "--model", FACTORY, "--weights", str(weights),
            "--port", str(http_port), "--grpc-port", str(grpc_port)]
    return running("nnmark", argv, env, ["model"], http_port, grpc_port, workdir)


def test_a_foreign_model_is_trained_marked_served_and_verified_from_the_cli(tmp_path):
    weights, tuned = tmp_path / "net.safetensors", tmp_path / "tuned.safetensors"
    r = _cli("train", "--model", FACTORY, "--input-shape", "3,32,32", "--normalize", NORMALIZE, "--data", "digits",
             "--epochs", 3, "--lr", 3e-3, "--out", weights)
    assert r.exit_code == 0, r.output
    source = ["--model", FACTORY, "--weights", weights]  # shape and normalisation from the weights' card
    r = _cli("mark", "dbi", *source, "--data", "digits", "--n", 20, "--itr", 300, "--eps", 1e-3,
             "--out", tmp_path / "dbi.key")
    assert r.exit_code == 0, r.output
    r = _cli("attack", "finetune", *source, "--data", "digits", "--lr", 1e-3, "--steps", 20, "--out", tuned)
    assert r.exit_code == 0, r.output

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with _serving(weights, tmp_path / "a") as server:
        r = _cli("verify", tmp_path / "dbi.key", "--endpoint", server.url, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["decision"] == "intact"
        r = _cli("verify", tmp_path / "dbi.key", "--endpoint", f"grpc://{server.grpc}", "--json")
        assert r.exit_code == 0, r.output
    with _serving(tuned, tmp_path / "b") as server:
        r = _cli("verify", tmp_path / "dbi.key", "--endpoint", server.url, "--json")
        assert r.exit_code == 1, r.output
        assert json.loads(r.stdout)["decision"] == "tampered"
