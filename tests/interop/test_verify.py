"""``nnmark verify`` and ``nnmark identify`` through real servers, for every endpoint shape.

For each server and shape: the untouched model is INTACT (exit 0), its noised copy TAMPERED (exit 1),
and deliberately wrong endpoint flags stop with exit 2 and a one-line diagnosis, never a verdict.

The DBI key's queries are snapped to 8-bit pixels (and labelled by the model again), as any key asked
through a UINT8 endpoint must be: the client sends round(255 x), which would otherwise move the fragile
samples themselves. The key carries preflight canaries (natural test images), which the wrong flags trip.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from click.testing import CliRunner

import shapes
from nnmark import keys
from nnmark.cli import main
from nnmark.marks import canary
from nnmark.marks.integrity import dbi
from nnmark.oracles import TorchOracle

pytestmark = pytest.mark.interop

SECRET = b"interop secret, long enough to sign with"
KEY_N = 20
KEY_ITR = 300
KEY_EPS = 1e-3
CANARY_POOL = 200
TELLTALE_N = 20
TELLTALE_REMOTE_MAX = 200

FLAGS = {
    "probabilities": [],
    "logits": ["--input-name", "input__0", "--output-name", "output__0", "--output-kind", "logits"],
    "nhwc-uint8": ["--input-name", "image", "--layout", "NHWC", "--input-dtype", "UINT8"],
    "labels": ["--output-name", "label", "--output-kind", "labels"],
}
"""The endpoint flags that describe each shape."""
MISREAD = r"^error: endpoint answers as the keyed model does when .*its inputs are normalised with {} statistics it does not " \
          r"expect.*: check .*--normalize"
MNIST_NORMALIZE = f"{shapes.MNIST_MEAN},{shapes.MNIST_STD}"
WRONG = {
    "probabilities": (["--normalize", MNIST_NORMALIZE], MISREAD.format("MNIST")),
    "logits": ([*FLAGS["logits"], "--normalize", "0.5,0.5"], MISREAD.format("0.5")),
    "nhwc-uint8": (["--input-name", "image", "--layout", "NCHW"], r"NHWC.*--layout|--layout.*NHWC"),
    "labels": ([*FLAGS["labels"], "--normalize", MNIST_NORMALIZE], MISREAD.format("MNIST")),
}
"""Flags that misdescribe each shape, and what the one-line refusal must say: the canaries (or, labels only, the
key's probes) answer as the keyed model misreading its inputs does, named with its flag, or the metadata
contradicts the flag."""


SERVERS = ("mlserver", "kserve")
CASES = [pytest.param(server, shape, id=f"{server}-{shape}") for server in SERVERS for shape in shapes.SHAPES]


@pytest.fixture(scope="session")
def secret_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("interop-secret") / "secret"
    path.write_bytes(SECRET)
    return path


@pytest.fixture(scope="session")
def dbi_key_file(lenet, mnist, tmp_path_factory):
    """A signed DBI key whose queries are 8-bit images (see the module docstring), with preflight canaries."""
    oracle = TorchOracle(lenet, mnist.shape)
    key = dbi.create(oracle, mnist.train.x[:KEY_N], itr=KEY_ITR, eps=KEY_EPS)
    pixels = (key.queries * 255).round() / 255
    key = dataclasses.replace(key, queries=pixels, expected=oracle.labels(pixels))
    key = canary.attach(key, oracle, mnist.test.x[:CANARY_POOL], mnist.test.y[:CANARY_POOL])
    path = tmp_path_factory.mktemp("interop-keys") / "dbi.key"
    keys.save(key, path, secret=SECRET)
    return path


def run(*args):
    """The CLI in-process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None})
    return result.exit_code, result.stdout, result.stderr


def verify(server, model: str, key, secret_file, *flags):
    return run("verify", key, "--endpoint", server.url, "--model-name", model, *flags,
               "--secret-file", secret_file, "--json")


@pytest.mark.parametrize("kind, shape", CASES)
def test_verify_intact_then_tampered(kind, shape, request, dbi_key_file, secret_file, checkpoints):
    server = request.getfixturevalue(kind)
    code, local, err = run("verify", dbi_key_file, "--model", checkpoints["noised"], "--secret-file", secret_file,
                           "--json")
    assert code == 1, err
    code, out, err = verify(server, shape, dbi_key_file, secret_file, *FLAGS[shape])
    assert code == 0 and json.loads(out)["decision"] == "intact", out + err
    code, out, err = verify(server, shape + shapes.NOISED, dbi_key_file, secret_file, *FLAGS[shape])
    assert code == 1, out + err
    assert json.loads(out)["flipped"] == json.loads(local)["flipped"]


@pytest.mark.parametrize("kind, transport", [("kserve", "rest-binary"), ("kserve", "grpc"), ("mlserver", "grpc")])
def test_verify_over_binary_rest_and_grpc(kind, transport, request, dbi_key_file, secret_file):
    server = request.getfixturevalue(kind)
    endpoint = f"grpc://{server.grpc}" if transport == "grpc" else server.url
    for model, want in (("probabilities", 0), ("probabilities" + shapes.NOISED, 1)):
        code, out, err = run("verify", dbi_key_file, "--endpoint", endpoint, "--transport", transport,
                             "--model-name", model, "--secret-file", secret_file, "--json")
        assert code == want, out + err


def test_binary_rest_against_mlserver_fails_at_once_with_its_error(mlserver, dbi_key_file, secret_file):
    """MLServer answers binary tensors with HTTP 500 (see test_servers): exit 2 naming it, not a verdict."""
    code, out, err = run("verify", dbi_key_file, "--endpoint", mlserver.url, "--transport", "rest-binary",
                         "--model-name", "probabilities", "--secret-file", secret_file)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "500" in err, out + err


@pytest.mark.parametrize("kind, shape", CASES)
def test_wrong_endpoint_flags_stop_before_any_verdict(kind, shape, request, dbi_key_file, secret_file):
    server = request.getfixturevalue(kind)
    flags, message = WRONG[shape]
    code, out, err = verify(server, shape, dbi_key_file, secret_file, *flags)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err, out + err
    assert re.search(message, lines[0]), lines[0]


def test_identify_tells_float32_from_float64_through_mlserver(mlserver, lenet_file, secret_file, tmp_path):
    key = tmp_path / "telltale.key"
    code, out, err = run("mark", "innformant", "--model", lenet_file, "--n", TELLTALE_N, "--envs", "float32,float64",
                         "--remote-max", TELLTALE_REMOTE_MAX, "--out", key, "--secret-file", secret_file, "--json")
    assert code == 0, err
    for model, env, want in (("probabilities", "float32", 0), (shapes.FLOAT64_MODEL, "float64", 1)):
        code, out, err = run("identify", key, "--endpoint", mlserver.url, "--model-name", model,
                             "--secret-file", secret_file, "--json")
        assert code == want and json.loads(out)["decision"] == env, (model, out + err)


@pytest.mark.parametrize("kind", SERVERS)
def test_audit_asks_a_real_server_and_logs_what_runs_it(kind, request, dbi_key_file, secret_file, tmp_path):
    server = request.getfixturevalue(kind)
    for model, want in (("probabilities", 0), ("probabilities" + shapes.NOISED, 1)):
        report = tmp_path / f"{model}.json"
        code, out, err = run("audit", dbi_key_file, "--endpoint", server.url, "--model-name", model,
                             "--secret-file", secret_file, "--report", report, "--log", tmp_path / "audit.jsonl")
        assert code == want, out + err
        (target,) = json.loads(report.read_text())["targets"]
        assert target["info"]["model"]["name"] == model
        assert target["info"]["server"]["name"] and "error" not in target["info"]["server"], target["info"]
    code, out, err = run("log", "verify", tmp_path / "audit.jsonl", "--secret-file", secret_file)
    assert code == 0, out + err
