"""``nnmark attack extract --endpoint``: the thief who holds only the API trains a copy on its answers."""

import contextlib
import json

import pytest
import torch
from click.testing import CliRunner

from nnmark import data, envs, models
from nnmark.attacks import ATTACKS
from nnmark.attacks.registry import register_attack
from nnmark.attacks.extract import extract_through
from nnmark.cli import main
from nnmark.cli.attack import thief_images
from nnmark.errors import ArgumentError
from nnmark.oracles import TorchOracle, oip
from nnmark.oracles.endpoint import DEFAULT_CONSISTENCY_SAMPLES
from nnmark.serve import create_app, serving

TOKEN = b"a-thiefs-stolen-token"
THIEF_HALF = 2001  # mnist5k@thief: the larger half of 4,000 training images (odd-sized classes give it one more)
ATTACKER_SPLIT = 500  # mnist5k's attacker split: the second half of its 1,000 test images


@contextlib.contextmanager
def endpoint(path, token=None):
    """`nnmark serve` of the checkpoint at ``path`` in-process; yields its URL and the list of the inference requests
    it received (whether each was binary, ``--transport rest-binary``), counted before the app looks at them."""
    model, config = models.load(path)
    app = create_app(envs.get("float32").oracle(model, tuple(config.input_shape)), model_name="model", token=token)
    inferences = []

    @app.middleware("http")
    async def count(request, call_next):
        if request.url.path.endswith("/infer"):
            inferences.append(oip.HEADER_LENGTH in request.headers)
        return await call_next(request)

    with serving(app) as url:
        yield url, inferences


def extract(url, out, *more):
    return CliRunner().invoke(main, ["attack", "extract", "--endpoint", url, "--out", str(out), *more],
                              env={"NNMARK_TOKEN": None})


def test_the_thief_copies_the_model_behind_the_api(lenet_file, lenet, mnist, tmp_path):
    out = tmp_path / "copy.safetensors"
    with endpoint(lenet_file) as (url, inferences):
        r = extract(url, out, "--data", "mnist5k@thief", "--student-arch", "lenet5", "--epochs", "3", "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    assert row["queries"] == THIEF_HALF + DEFAULT_CONSISTENCY_SAMPLES  # every image once, plus the re-checks
    assert inferences and row["endpoint"] == url and row["out"] == str(out)
    copy, config = models.load(out)
    assert config.arch == "lenet5" and config.data == "mnist5k@thief" and config.accuracy == row["test_accuracy"]
    with torch.no_grad():  # the test split is held out from the thief's half
        agree = (copy(mnist.test.x).argmax(1) == lenet.eval()(mnist.test.x).argmax(1)).float().mean().item()
    assert agree > 0.8 and abs(config.accuracy - models.accuracy(copy, mnist.test)) < 1e-9


def test_without_a_thief_half_the_thief_asks_its_attacker_split_with_the_servers_token(lenet_file, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_bytes(TOKEN + b"\n")
    out = tmp_path / "copy.safetensors"
    args = ("--data", "mnist5k", "--student-arch", "lenet5", "--epochs", "1")
    with endpoint(lenet_file, token=TOKEN) as (url, inferences):
        refused = extract(url, out, *args)
        assert refused.exit_code == 2 and refused.stderr.count("\n") == 1 and not out.exists()
        r = extract(url, out, *args, "--token-file", str(token_file), "--transport", "rest-binary")
    assert r.exit_code == 0, r.output
    assert inferences and all(inferences)  # the endpoint-shape flags reach the oracle
    spent = ATTACKER_SPLIT + DEFAULT_CONSISTENCY_SAMPLES
    assert f"on {ATTACKER_SPLIT} thief images of mnist5k from {url}; {spent} queries spent" in r.stdout
    assert TOKEN.decode() not in r.output + refused.output and models.load(out)[1].arch == "lenet5"


def test_a_budget_below_the_extraction_is_refused_before_any_query_and_one_that_pays_for_it_runs(lenet_file, tmp_path):
    out = tmp_path / "copy.safetensors"
    needed = ATTACKER_SPLIT + DEFAULT_CONSISTENCY_SAMPLES
    args = ("--data", "mnist5k", "--student-arch", "lenet5", "--epochs", "1")
    with endpoint(lenet_file) as (url, inferences):
        r = extract(url, out, *args, "--budget", str(needed - 1))
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "budget" in r.stderr and "Traceback" not in r.output
        assert inferences == [] and not out.exists()
        r = extract(url, out, *args, "--budget", str(needed))
    assert r.exit_code == 0, r.output
    assert out.exists() and f"{needed} queries spent" in r.stdout


@pytest.mark.parametrize("arch", [[], ["--student-arch", "same"]], ids=["default", "same"])
def test_the_victims_own_architecture_is_refused_on_an_endpoint_before_any_query(arch, lenet_file, tmp_path):
    out = tmp_path / "copy.safetensors"
    with endpoint(lenet_file) as (url, inferences):
        r = extract(url, out, "--data", "mnist5k", *arch)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and '"same"' in r.stderr
    assert inferences == [] and not out.exists()


def test_an_oracle_form_refuses_same_in_the_library_before_any_query(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    with pytest.raises(ArgumentError, match="same"):
        extract_through(oracle, mnist.test.x[:10], mnist.test.y[:10], student_arch="same")
    assert oracle.queries == 0


@pytest.mark.parametrize("args, words", [
    (["--model", "M", "--endpoint", "http://127.0.0.1:9"], "exactly one of --model FILE and --endpoint URL"),
    ([], "exactly one of --model FILE and --endpoint URL"),
    (["--model", "M", "--budget", "10"], "--budget and --env: only with --endpoint"),
    (["--endpoint", "http://127.0.0.1:9", "--student-arch", "lenet5"], "--endpoint needs --data"),
])
def test_one_suspect_and_its_own_options(args, words, lenet_file, tmp_path):
    args = [str(lenet_file) if a == "M" else a for a in args]
    r = CliRunner().invoke(main, ["attack", "extract", *args, "--out", str(tmp_path / "c.safetensors"), "--json"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and words in r.stderr
    assert json.loads(r.stdout)["error"] and not (tmp_path / "c.safetensors").exists()


def test_only_an_attack_on_the_thiefs_images_with_a_student_arch_may_register_an_oracle_form():
    def noise_only(model, *, student_arch: str = "same"):
        """Args:
            student_arch: the copy's architecture.
        """

    def no_student(model, x, y):
        """Unused."""

    for fn, data_kind in ((noise_only, "none"), (no_student, "attacker")):
        with pytest.raises(TypeError, match="runs on an oracle"):
            register_attack("oracle-test", summary="s", applies_to="a", data=data_kind, oracle=extract_through)(fn)
    assert "oracle-test" not in ATTACKS and ATTACKS["extract"].oracle is extract_through


def test_only_an_attack_with_an_oracle_form_takes_an_endpoint(lenet_file, tmp_path):
    r = CliRunner().invoke(main, ["attack", "finetune", "--endpoint", "http://127.0.0.1:9", "--out",
                                  str(tmp_path / "c.safetensors")])
    assert r.exit_code == 2 and "No such option '--endpoint'" in r.stderr


def test_the_thiefs_images_are_its_half_of_the_training_split_else_the_attacker_split(mnist):
    thief = thief_images(data.load("mnist5k@thief"))
    assert len(thief) == THIEF_HALF and torch.equal(thief.x, data.halves(mnist)[1].x)
    attacker = thief_images(mnist)
    assert len(attacker) == ATTACKER_SPLIT and torch.equal(attacker.x, mnist.test.x[ATTACKER_SPLIT:])
