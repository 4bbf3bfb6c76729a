"""The command line end to end: exit codes 0 (intact), 1 (tampered), 2 (error)."""

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from nnmark import __version__, keys
from nnmark.marks import canary
from nnmark.cli import main
from ports import free_port


@pytest.fixture
def run(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"correct horse battery staple\n")

    def invoke(*args, env=None):
        result = CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None, **(env or {})})
        return result

    invoke.secret = secret
    return invoke


@pytest.fixture
def dbi_key_file(run, lenet_file, tmp_path):
    key = tmp_path / "dbi.key"
    r = run("mark", "dbi", "--model", lenet_file, "--n", 30, "--itr", 300, "--eps", 1e-3,
            "--out", key, "--secret-file", run.secret, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n"] == 30 and summary["signed"] and 10 < summary["psnr_db"] < 60
    return key


def test_version():
    out = subprocess.run([sys.executable, "-m", "nnmark", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_verify_exit_codes(run, lenet_file, dbi_key_file, tmp_path):
    r = run("verify", dbi_key_file, "--model", lenet_file, "--secret-file", run.secret, "--json")
    assert r.exit_code == 0, r.output
    verdict = json.loads(r.stdout)
    assert verdict["decision"] == "intact" and verdict["statistic"] == 0 and verdict["flipped"] == []
    assert verdict["queries"] == 30 and verdict["model_digest_matches"] is True

    attacked = tmp_path / "attacked.safetensors"
    r = run("attack", "finetune", "--model", lenet_file, "--out", attacked, "--lr", 1e-3, "--steps", 20, "--freeze-bn")
    assert r.exit_code == 0, r.output
    r = run("verify", dbi_key_file, "--model", attacked, "--secret-file", run.secret, "--json")
    assert r.exit_code == 1, r.output
    verdict = json.loads(r.stdout)
    assert verdict["decision"] == "tampered" and verdict["statistic"] > 0
    assert len(verdict["flipped"]) == round(verdict["statistic"] * 30)
    assert verdict["model_digest_matches"] is False

    r = run("verify", dbi_key_file, "--model", attacked, "--secret-file", run.secret)
    assert r.exit_code == 1 and r.output.startswith("TAMPERED")


def test_noise_attack_is_detected(run, lenet_file, dbi_key_file, tmp_path):
    noisy = tmp_path / "noisy.safetensors"
    assert run("attack", "noise", "--model", lenet_file, "--out", noisy, "--std", 1e-2).exit_code == 0
    assert run("verify", dbi_key_file, "--model", noisy, "--secret-file", run.secret).exit_code == 1


def test_errors_exit_2_with_one_line(run, lenet_file, dbi_key_file, tmp_path):
    def fails(*args, env=None):
        r = run(*args, env=env)
        assert r.exit_code == 2, r.output
        assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output
        return r.output

    tampered = tmp_path / "tampered.key"
    blob = bytearray(dbi_key_file.read_bytes())
    blob[-5] ^= 0x01
    tampered.write_bytes(bytes(blob))
    assert "signature" in fails("verify", tampered, "--model", lenet_file, "--secret-file", run.secret)
    truncated = tmp_path / "truncated.key"
    truncated.write_bytes(dbi_key_file.read_bytes()[:200])
    assert "truncated" in fails("verify", truncated, "--model", lenet_file, "--secret-file", run.secret)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"another secret")
    fails("verify", dbi_key_file, "--model", lenet_file, "--secret-file", wrong)
    fails("verify", dbi_key_file, "--model", lenet_file)  # signed, but no secret given
    fails("verify", dbi_key_file, "--model", tmp_path / "missing.safetensors", "--secret-file", run.secret)
    assert "budget" in fails("verify", dbi_key_file, "--model", lenet_file, "--secret-file", run.secret, "--budget", 10)
    not_a_model = tmp_path / "junk.safetensors"
    not_a_model.write_bytes(b"junk")
    fails("verify", dbi_key_file, "--model", not_a_model, "--secret-file", run.secret)


def test_signing_policy(run, lenet_file, tmp_path):
    key = tmp_path / "k.key"
    r = run("mark", "random", "--model", lenet_file, "--n", 5, "--out", key)
    assert r.exit_code == 2 and "secret" in r.output and not key.exists()
    assert run("mark", "random", "--model", lenet_file, "--n", 5, "--out", key, "--unsigned").exit_code == 0
    assert run("verify", key, "--model", lenet_file).exit_code == 2  # unsigned needs --unsigned
    assert run("verify", key, "--model", lenet_file, "--unsigned").exit_code == 0
    r = run("mark", "natural", "--model", lenet_file, "--n", 5, "--out", key, env={"NNMARK_SECRET": "s3cret"})
    assert r.exit_code == 0
    assert keys.load(key, secret=b"s3cret").method == "natural"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_train_reports_accuracy(run, tmp_path):
    out = tmp_path / "digits.safetensors"
    r = run("train", "--arch", "lenet5", "--data", "digits", "--epochs", 10, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    assert 0.8 < row["test_accuracy"] <= 1 and out.exists()
    assert run("train", "--arch", "lenet5", "--data", "nope", "--out", out).exit_code == 2


def test_train_in_micro_batches_takes_the_same_steps(run, tmp_path, training_passes):
    """--micro-batch N bounds every training pass and sums the gradients (a LeNet-5 has no batch statistics: the
    same steps up to the order of the sums, which Adam's per-weight scaling lets drift by about a hundredth over an
    epoch: as accurate); the default, auto, keeps these small batches whole: the very same file."""
    from nnmark import models

    def trained(*extra):
        out = tmp_path / f"m{len(extra)}{extra[-1] if extra else ''}.safetensors"
        seen, r = training_passes(
            lambda: run("train", "--arch", "lenet5", "--data", "digits", "--epochs", 1, "--out", out, "--json", *extra))
        assert r.exit_code == 0, r.output
        return max(seen), models.digest(models.load(out)[0]), json.loads(r.stdout)["test_accuracy"]

    auto, whole, five = trained(), trained("--micro-batch", "whole"), trained("--micro-batch", 5)
    assert (auto[0], whole[0], five[0]) == (32, 32, 5)
    assert auto[1] == whole[1] != five[1] and abs(five[2] - whole[2]) < 0.03
    r = run("train", "--arch", "lenet5", "--data", "digits", "--micro-batch", "0", "--out", tmp_path / "x.safetensors")
    assert r.exit_code == 2 and "--micro-batch" in r.output


@contextlib.contextmanager
def nnmark_serve(*args):
    """``nnmark serve ARGS`` in a subprocess on a free port; yields its URL once it is ready."""
    import time

    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "nnmark", "serve", *map(str, args), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_verify_endpoint_gives_the_local_verdict(run, lenet_file, dbi_key_file, tmp_path):
    from nnmark import models, serve
    from nnmark.attacks import weight_noise
    from nnmark.oracles import TorchOracle

    with nnmark_serve("--model", lenet_file) as url:
        remote = run("verify", dbi_key_file, "--endpoint", url, "--secret-file", run.secret, "--json")
    local = run("verify", dbi_key_file, "--model", lenet_file, "--secret-file", run.secret, "--json")
    assert remote.exit_code == local.exit_code == 0, remote.output
    assert json.loads(remote.output)["flipped"] == json.loads(local.output)["flipped"] == []

    model, config = models.load(lenet_file)
    noisy = weight_noise(model, 1e-2, seed=3)
    noisy_file = tmp_path / "noisy.safetensors"
    models.save(noisy, config, noisy_file)
    app = serve.create_app(TorchOracle(noisy, config.input_shape), model_name="model")
    with serve.serving(app) as noisy_url:
        remote = run("verify", dbi_key_file, "--endpoint", noisy_url, "--secret-file", run.secret, "--json")
    local = run("verify", dbi_key_file, "--model", noisy_file, "--secret-file", run.secret, "--json")
    assert remote.exit_code == local.exit_code == 1, remote.output
    assert json.loads(remote.output)["flipped"] == json.loads(local.output)["flipped"]
    assert run("verify", dbi_key_file, "--endpoint", f"http://127.0.0.1:{free_port()}",
               "--secret-file", run.secret).exit_code == 2


def test_pairs_key_verifies_through_the_cli_and_an_endpoint(run, lenet_file, tmp_path):
    from nnmark import models, serve
    from nnmark.attacks import weight_noise
    from nnmark.oracles import TorchOracle

    key = tmp_path / "pairs.key"
    r = run("mark", "pairs", "--model", lenet_file, "--n-pairs", 6, "--user-id", "alice", "--max-itr", 100,
            "--alpha", 1e-5, "--max-steps", 500, "--out", key, "--secret-file", run.secret, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["pairs"] >= 4
    assert run("verify", key, "--model", lenet_file, "--secret-file", run.secret).exit_code == 0
    model, config = models.load(lenet_file)
    noisy_file = tmp_path / "noisy.safetensors"
    models.save(weight_noise(model, 1e-3, seed=1), config, noisy_file)
    local = run("verify", key, "--model", noisy_file, "--secret-file", run.secret, "--json")
    assert local.exit_code == 1, local.output
    app = serve.create_app(TorchOracle(models.load(noisy_file)[0], config.input_shape), model_name="model")
    with serve.serving(app) as url:
        remote = run("verify", key, "--endpoint", url, "--secret-file", run.secret, "--json")
    assert remote.exit_code == 1, remote.output
    assert json.loads(remote.output)["flipped"] == json.loads(local.output)["flipped"]
    r = run("mark", "pairs", "--model", lenet_file, "--user-id", "bob", "--out", tmp_path / "x.key", "--unsigned")
    assert r.exit_code == 2 and "secret" in r.output


def test_attack_commands_write_models_changed_as_claimed(run, lenet_file, tmp_path):
    from nnmark import models
    from nnmark.attacks import measure

    original, _ = models.load(lenet_file)
    outputs = {}
    for name, args in {
        "prune": ["--fraction", 0.3, "--scope", "layer"],
        "quantize": ["--granularity", "channel"],
        "relnoise": ["--alpha", 10],
        "finetune-mode": ["--mode", "FTLL", "--epochs", 1],
        "backdoor": ["--target", 3, "--max-steps", 300],
    }.items():
        out = tmp_path / f"{name}.safetensors"
        r = run("attack", name, "--model", lenet_file, "--out", out, *args)
        assert r.exit_code == 0, (name, r.output)
        outputs[name] = models.load(out)[0]
        assert models.digest(outputs[name]) != models.digest(original), name
    assert all(abs(s - 0.3) < 0.01 for s in measure.layer_sparsity(outputs["prune"]).values())
    assert max(max(v) for v in measure.distinct_values(outputs["quantize"], granularity="channel").values()) <= 255
    head = [n for n, _ in original.named_parameters()][-2:]
    ftll = dict(outputs["finetune-mode"].named_parameters())
    assert all(torch.equal(p, ftll[n]) for n, p in original.named_parameters() if n not in head)
    assert "poison success 100%" in r.output
    assert run("attack", "prune", "--model", lenet_file, "--out", tmp_path / "x", "--fraction", 1.0).exit_code == 2


def test_coupled_watermark_found_in_its_model_and_not_in_a_clean_one(run, lenet_file, tmp_path):
    wm, key = tmp_path / "wm.safetensors", tmp_path / "coupled.key"
    r = run("mark", "coupled", "--arch", "lenet5", "--data", "mnist5k", "--epochs", 4, "--base", 4, 1, "--target", 7,
            "--out-model", wm, "--out", key, "--secret-file", run.secret, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["success"] >= 0.8
    found = run("verify", key, "--model", wm, "--secret-file", run.secret, "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.output)["decision"] == "watermarked"
    clean = run("verify", key, "--model", lenet_file, "--secret-file", run.secret, "--json")
    assert clean.exit_code == 1, clean.output
    assert json.loads(clean.output)["details"]["p_value"] > 1e-3
    assert run("mark", "coupled", "--arch", "lenet5", "--data", "mnist5k", "--base", 1, 2, "--target", 2,
               "--out-model", wm, "--out", key, "--unsigned").exit_code == 2


def test_frontier_watermark_found_in_the_marked_model_and_not_in_its_source(run, lenet_file, tmp_path):
    wm, key = tmp_path / "wm.safetensors", tmp_path / "frontier.key"
    r = run("mark", "frontier", "--model", lenet_file, "--epochs", 1, "--out-model", wm, "--out", key,
            "--secret-file", run.secret, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["success_before"] == 0.5 and summary["success"] >= 0.8
    assert run("verify", key, "--model", wm, "--secret-file", run.secret).exit_code == 0
    source = run("verify", key, "--model", lenet_file, "--secret-file", run.secret, "--json")
    assert source.exit_code == 1, source.output
    assert json.loads(source.output)["decision"] == "not watermarked"
    assert run("mark", "frontier", "--model", lenet_file, "--eps", 0, "--out-model", wm, "--out", key,
               "--unsigned").exit_code == 2


def test_innformant_identifies_environments_locally_and_through_nnmark_serve(run, lenet_file, tmp_path):
    key = tmp_path / "telltale.key"
    r = run("mark", "innformant", "--model", lenet_file, "--n", 20, "--envs", "float32,float64", "--remote-max", 200,
            "--out", key, "--secret-file", run.secret, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["found"] >= 5
    r = run("identify", key, "--model", lenet_file, "--env", "float32", "--secret-file", run.secret, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["decision"] == "float32", r.output
    r = run("identify", key, "--model", lenet_file, "--env", "float64", "--secret-file", run.secret, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["decision"] == "float64", r.output
    for env, code in (("float32", 0), ("float64", 1)):
        with nnmark_serve("--model", lenet_file, "--env", env) as url:
            r = run("identify", key, "--endpoint", url, "--secret-file", run.secret, "--json")
        assert r.exit_code == code and json.loads(r.stdout)["decision"] == env, (env, r.output)


def test_envs_lists_what_runs_here(run, lenet_file):
    r = run("envs", "--model", lenet_file, "--n", 50)
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[1] for line in r.output.splitlines()[1:]}
    assert rows["float32"] == "yes" and rows["float64"] == "yes"
    assert rows.get("cuda") in ("yes", "no")


def test_metafinger_matches_the_source_and_a_fine_tuned_copy_but_not_an_independent_model(run, tmp_path):
    from nnmark import data, models
    from nnmark.attacks import finetune_mode
    from nnmark.data.roles import attacker_data

    m0, m7, ft = (tmp_path / f"{n}.safetensors" for n in ("m0", "m7", "ftal"))
    for path, seed in ((m0, 0), (m7, 7)):
        assert run("train", "--arch", "lenet5", "--data", "digits", "--epochs", 8, "--seed", seed,
                   "--out", path).exit_code == 0
    model, config = models.load(m0)
    atk = attacker_data(data.load("digits"))
    models.save(finetune_mode(model, atk.x, atk.y, mode="FTAL", seed=1), config, ft)
    key = tmp_path / "metafinger.key"
    r = run("mark", "metafinger", "--model", m0, "--unsigned", "--n", 40, "--negatives", 2, "--val-negatives", 2,
            "--af", 2, "--epochs", 30, "--cache-dir", tmp_path / "cache", "--executor", "serial", "--out", key,
            "--json", "--train-micro-batch", 8)
    assert r.exit_code == 0, r.output
    assert keys.load(key, secret=None, allow_unsigned=True).config["train_micro_batch"] == 8
    records = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert records and all(r["spec"]["micro_batch"] == 8 for r in records)  # the pools trained in chunks of 8
    for suspect, code in ((m0, 0), (ft, 0), (m7, 1)):
        v = run("verify", key, "--model", suspect, "--unsigned", "--json")
        assert v.exit_code == code, (suspect.name, v.output)
        assert 0 <= json.loads(v.output)["details"]["p_value"] <= 1


def test_ipguard_key_from_the_command_line_matches_its_source(run, lenet_file, tmp_path):
    key = tmp_path / "ipguard.key"
    r = run("mark", "ipguard", "--model", lenet_file, "--n", 20, "--iterations", 100, "--out", key,
            "--secret-file", run.secret, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["method"] == "ipguard"
    r = run("verify", key, "--model", lenet_file, "--secret-file", run.secret, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["decision"] == "match", r.output


def test_a_mis_described_endpoint_is_an_error_not_a_verdict(run, lenet_file, dbi_key_file):
    key = keys.load(dbi_key_file, secret=keys.read_secret(run.secret))
    assert len(key.extras[canary.QUERIES]) == canary.CANARY_COUNT  # every mark command stores canaries
    with nnmark_serve("--model", lenet_file) as url:
        r = run("verify", dbi_key_file, "--endpoint", url, "--secret-file", run.secret)
        assert r.exit_code == 0, r.output
        r = run("verify", dbi_key_file, "--endpoint", url, "--normalize", "0.1307,0.3081", "--secret-file", run.secret)
    assert r.exit_code == 2 and "--normalize says 0.1307,0.3081" in r.stderr, r.output  # refused before asking


def test_a_key_carries_endpoint_defaults_that_verify_flags_override(run, lenet_file, tmp_path):
    key = tmp_path / "natural.key"
    r = run("mark", "natural", "--model", lenet_file, "--n", 10, "--out", key, "--secret-file", run.secret,
            "--endpoint-default", "layout=NHWC", "--endpoint-default", "input-dtype=FP32")
    assert r.exit_code == 0, r.output
    assert keys.load(key, secret=keys.read_secret(run.secret)).config["endpoint"] == {"layout": "NHWC",
                                                                                       "input_dtype": "FP32"}
    with nnmark_serve("--model", lenet_file) as url:
        refused = run("verify", key, "--endpoint", url, "--secret-file", run.secret)
        overridden = run("verify", key, "--endpoint", url, "--layout", "NCHW", "--secret-file", run.secret)
    assert refused.exit_code == 2 and "--layout says NHWC" in refused.stderr, refused.output
    assert overridden.exit_code == 0, overridden.output
    r = run("mark", "natural", "--model", lenet_file, "--out", key, "--unsigned", "--endpoint-default", "colour=red")
    assert r.exit_code == 2 and "FIELD=VALUE" in r.stderr


def test_adi_watermark_fine_tuned_into_a_pretrained_model(run, lenet_file, tmp_path):
    wm, key = tmp_path / "adi.safetensors", tmp_path / "adi.key"
    r = run("mark", "adi", "--model", lenet_file, "--out-model", wm, "--out", key,
            "--secret-file", run.secret, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["pretrained"] is True and summary["out_model"] == str(wm)
    assert run("verify", key, "--model", wm, "--secret-file", run.secret).exit_code == 0
    assert run("verify", key, "--model", lenet_file, "--secret-file", run.secret).exit_code == 1
