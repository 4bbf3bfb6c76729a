"""``nnmark mark`` is generated from the method registry: each method's command has its create function's options,
and the embedding methods train and write any trainable --model source (a factory model that is not in the zoo)."""

import inspect
import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from test_attack_registry import _literal_defaults

import foreign_models
from nnmark import keys, models
from nnmark.cli import main
from nnmark.cli.mark import KINDS, mark
from nnmark.marks import METHODS
from nnmark.marks.ownership import sac
from nnmark.marks.spec import INPUTS
from nnmark.options import REQUIRED, SCALARS

FACTORY = "foreign_models:small_gn_net"
NORMALIZE = "imagenet"
SECRET = "a long test secret"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_a_mark_command_with_its_create_options(name):
    spec = METHODS[name]
    assert spec.create is not None and spec.inputs in INPUTS and spec.inputs in KINDS
    command = mark.commands[name]
    params = {p.name: p for p in command.params}
    signature = inspect.signature(spec.create).parameters
    for option in spec.options:
        assert option.type in SCALARS and option.help, (name, option)
        param = params[option.name]
        assert param.opts[0] == "--" + option.name.replace("_", "-")
        if option.required:
            assert param.required and option.name in signature and signature[option.name].default is REQUIRED
            continue
        assert param.default == option.default, (name, option.name)
        if option.group is None:  # the default is the create function's, a named constant of its module
            assert signature[option.name].default == option.default
        if option.choices:
            assert tuple(param.type.choices) == option.choices
    assert not [n for n in _literal_defaults(spec.create) if n in params], name
    assert "Example:" in command.help and f"nnmark mark {name} " in command.help


def test_an_optional_value_is_left_to_the_function_and_says_its_default():
    dbi = {o.name: o for o in METHODS["dbi"].options}
    assert dbi["eps"].default is None and "default: 1e-4" in dbi["eps"].help
    assert dbi["direction"].choices == ("descent", "ascent")
    r = CliRunner().invoke(main, ["mark", "dbi", "--help"])
    assert "--direction [descent|ascent]" in r.output and "default: 1e-4" in r.output


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": SECRET})


def _verify(key, *source):
    r = _cli("verify", key, *source, "--json")
    return r.exit_code, json.loads(r.stdout) if r.stdout.startswith("{") else r.output


def test_coupled_frontier_and_adi_mark_a_factory_model_and_write_it_back_as_weights(tmp_path):
    source = ["--model", FACTORY, "--input-shape", "3,32,32", "--normalize", NORMALIZE]
    wm, coupled_key = tmp_path / "coupled.safetensors", tmp_path / "coupled.key"
    r = _cli("mark", "coupled", *source, "--data", "digits", "--epochs", 6, "--base", 1, 2, "--target", 3,
             "--out-model", wm, "--out", coupled_key, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["success"] >= 0.8
    card = keys.load(coupled_key, secret=SECRET.encode()).config["model_card"]
    assert card["normalize"] is not None and card["input_shape"] == [3, 32, 32]
    code, verdict = _verify(coupled_key, "--model", FACTORY, "--weights", wm)  # the card comes from the key
    assert code == 0 and verdict["decision"] == "watermarked" and verdict["model_digest_matches"] is True, verdict
    loaded = models.load_any(FACTORY, weights=wm)  # the weights carry the card: no --normalize needed
    assert loaded.card.normalize is not None and loaded.kind == "factory"

    stitched, frontier_key = tmp_path / "frontier.safetensors", tmp_path / "frontier.key"
    r = _cli("mark", "frontier", "--model", FACTORY, "--weights", wm, "--data", "digits", "--eps", 0.05,
             "--epochs", 2,
             "--out-model", stitched, "--out", frontier_key, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["success"] >= 0.8
    code, verdict = _verify(frontier_key, "--model", FACTORY, "--weights", stitched)
    assert code == 0 and verdict["decision"] == "watermarked", verdict
    code, verdict = _verify(frontier_key, "--model", FACTORY, "--weights", wm)  # the model before stitching
    assert code == 1 and verdict["decision"] == "not watermarked", verdict

    adi_model, adi_key = tmp_path / "adi.safetensors", tmp_path / "adi.key"
    r = _cli("mark", "adi", "--model", FACTORY, "--weights", wm, "--data", "digits", "--out-model", adi_model,
             "--out", adi_key, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["pretrained"] is True, r.output
    assert _verify(adi_key, "--model", FACTORY, "--weights", adi_model)[0] == 0


def test_a_torchscript_model_cannot_be_trained_to_embed_a_watermark(tmp_path):
    net = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(foreign_models.small_gn_net().eval()), net)
    for method in ("frontier", "adi", "coupled"):
        r = _cli("mark", method, "--model", net, "--input-shape", "3,32,32", "--data", "digits",
                 "--out-model", tmp_path / "wm.pt", "--out", tmp_path / "k.key")
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and "needs training" in lines[0], (method, r.output)
        assert not (tmp_path / "wm.pt").exists() and not (tmp_path / "k.key").exists()


def test_embedding_from_scratch_takes_either_arch_or_model(tmp_path):
    out = ["--data", "digits", "--out-model", tmp_path / "wm.safetensors", "--out", tmp_path / "k.key"]
    r = _cli("mark", "zhang", *out)
    assert r.exit_code == 2 and "--arch" in r.stderr
    r = _cli("mark", "zhang", "--arch", "lenet5", "--model", FACTORY, *out)
    assert r.exit_code == 2 and "not both" in r.stderr
    r = _cli("mark", "coupled", "--model", FACTORY, "--weights", tmp_path / "w.safetensors", *out)
    assert r.exit_code == 2 and "drop --weights" in r.stderr  # from scratch: given weights would be thrown away


def test_metafinger_marks_a_factory_model_from_its_own_shadow_pools(tmp_path):
    nets = {seed: tmp_path / f"net{seed}.safetensors" for seed in (0, 7)}
    for seed, out in nets.items():
        r = _cli("train", "--model", FACTORY, "--input-shape", "3,32,32", "--normalize", NORMALIZE, "--data", "digits",
                 "--epochs", 2, "--seed", seed, "--out", out)
        assert r.exit_code == 0, r.output
    key = tmp_path / "finger.key"
    r = _cli("mark", "metafinger", "--model", FACTORY, "--weights", nets[0], "--data", "digits", "--n", 20,
             "--candidates", 100, "--negatives", 2, "--val-negatives", 2, "--af", 1, "--shadow-epochs", 2,
             "--finetune-epochs", 1, "--epochs", 10, "--executor", "serial", "--cache-dir", tmp_path / "cache",
             "--out", key, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shadow_models_trained"] == 7  # 1 positive, 2 negative families of 2, 2 validation
    made = keys.load(key, secret=SECRET.encode())
    assert made.config["arch"] == FACTORY and made.config["model_card"]["normalize"] is not None
    code, verdict = _verify(key, "--model", FACTORY, "--weights", nets[0])
    assert code == 0 and verdict["decision"] == "match", verdict
    code, verdict = _verify(key, "--model", FACTORY, "--weights", nets[7])  # the same factory, trained apart
    assert code == 1 and verdict["decision"] == "no match", verdict


def test_sac_calibrates_a_factory_model_on_scratch_models_of_the_factory_cached_with_its_pools(tmp_path):
    net = tmp_path / "net.safetensors"
    r = _cli("train", "--model", FACTORY, "--input-shape", "3,32,32", "--normalize", NORMALIZE, "--data", "digits",
             "--epochs", 2, "--seed", 0, "--out", net)
    assert r.exit_code == 0, r.output
    cache = tmp_path / "cache"
    common = ["--model", FACTORY, "--weights", net, "--data", "digits", "--negatives", 2, "--val-negatives", 2,
              "--af", 0, "--shadow-epochs", 2, "--scratch-negatives", 3, "--scratch-epochs", 2, "--executor",
              "serial", "--cache-dir", cache, "--n", 30, "--max-p-value", 0.2, "--json"]
    r = _cli("mark", "sac", *common, "--out", tmp_path / "sac.key")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shadow_models_trained"] == 7  # 2 + 2 pools' negatives, 3 scratch
    scratch = [json.loads(p.read_text())["spec"] for p in cache.glob("*.json")]
    scratch = [spec for spec in scratch if spec["seed"] >= sac.SCRATCH_SEEDS]
    assert len(scratch) == 3 and all(s["arch"] == FACTORY and s["card"]["normalize"] for s in scratch)
    made = keys.load(tmp_path / "sac.key", secret=SECRET.encode())
    assert made.config["calibrated_on"]["scratch"] == 3
    r = _cli("mark", "sac", *common, "--patch", 0.3, "--out", tmp_path / "sac-patch.key")  # another key, same source
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shadow_models_trained"] == 0  # the second key of the source trains nothing
    code, verdict = _verify(tmp_path / "sac.key", "--model", FACTORY, "--weights", net)
    assert code == 0 and verdict["decision"] == "match", verdict


def test_one_command_per_method_and_nothing_else():
    assert set(mark.commands) == set(METHODS)
