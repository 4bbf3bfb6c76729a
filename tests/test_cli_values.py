"""CLI options travel as values: a model source's and an endpoint's options reach the code that asks the model (in
``audit``'s worker threads too), and bad values are refused in one line before any work."""

import contextlib
import json

import pytest
import safetensors.torch
from click.testing import CliRunner

import nnmark
from nnmark import envs, keys, models, oracles
from nnmark.audit import run as audit_run
from nnmark.cli import main
from nnmark.serve import create_app, serving
from nnmark.suspect import ModelSource

FACTORY = "foreign_models:small_gn_net"
SHAPE = "3,32,32"
NORMALIZE = "0.5,0.45,0.4,0.25,0.25,0.3"  # foreign_models.MEAN_STD
WRONG_NORMALIZE = "0.1,0.9,0.5,0.05,1.0,0.2"


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None, "NNMARK_TOKEN": None,
                                                                  **(env or {})})


def refused(*args) -> str:
    """The one error line of a call that must exit 2 without a traceback."""
    r = cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output and r.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    """A factory model trained on digits, its weights saved WITHOUT a card (so only --input-shape and --normalize
    say how to read it), a weight-noised copy, and two random keys made from it through the CLI (a factory names no
    dataset, so they hold no canaries: their verdicts alone decide)."""
    root = tmp_path_factory.mktemp("factory")
    carded, bare = root / "carded.safetensors", root / "bare.safetensors"
    r = cli("train", "--model", FACTORY, "--input-shape", SHAPE, "--normalize", NORMALIZE, "--data", "digits",
            "--epochs", 2, "--out", carded)
    assert r.exit_code == 0, r.output
    safetensors.torch.save_file(safetensors.torch.load_file(carded), bare)  # the same tensors, no card
    source = ("--model", FACTORY, "--weights", bare, "--input-shape", SHAPE, "--normalize", NORMALIZE)
    noised = root / "noised.safetensors"
    r = cli("attack", "noise", *source, "--std", 0.05, "--out", noised)
    assert r.exit_code == 0, r.output
    safetensors.torch.save_file(safetensors.torch.load_file(noised), noised)  # its card dropped too
    made = []
    for seed in (0, 1):
        made.append(root / f"random{seed}.key")
        r = cli("mark", "random", *source, "--n", 20, "--seed", seed, "--out", made[-1], "--unsigned")
        assert r.exit_code == 0, r.output
    return {"bare": bare, "noised": noised, "keys": made, "source": source}


def _audit(factory, *source):
    return cli("audit", *factory["keys"], *source, "--unsigned", "--json")


def test_audit_model_gets_every_source_option_in_its_worker_thread(factory):
    intact = _audit(factory, *factory["source"])
    assert intact.exit_code == 0, intact.output
    target = json.loads(intact.stdout)["targets"][0]
    assert [k["decision"] for k in target["keys"]] == ["intact", "intact"] and target["info"]["kind"] == "factory"
    assert target["info"]["model_digest_computed"] == keys.load(factory["keys"][0], secret=None,
                                                                allow_unsigned=True).model_digest

    tampered = _audit(factory, "--model", FACTORY, "--weights", factory["noised"], "--input-shape", SHAPE,
                      "--normalize", NORMALIZE)
    assert tampered.exit_code == 1, tampered.output
    assert "tampered" in [k["decision"] for k in json.loads(tampered.stdout)["targets"][0]["keys"]]

    renormalised = _audit(factory, *factory["source"][:-1], WRONG_NORMALIZE)  # --normalize reaches the thread
    assert renormalised.exit_code == 1, renormalised.output


def test_audit_model_without_its_input_shape_is_that_targets_error(factory):
    r = _audit(factory, "--model", FACTORY, "--weights", factory["bare"], "--normalize", NORMALIZE)
    assert r.exit_code == 2, r.output
    assert "input shape" in json.dumps(json.loads(r.stdout))


def test_the_api_and_audit_run_open_a_model_source_as_the_cli_does(factory):
    source = ModelSource(FACTORY, str(factory["bare"]), (3, 32, 32), NORMALIZE)
    key = keys.load(factory["keys"][0], secret=None, allow_unsigned=True)
    assert nnmark.verify(key, source).decision == "intact"
    assert nnmark.verify(key, ModelSource(FACTORY, str(factory["bare"]), (3, 32, 32), WRONG_NORMALIZE)).passed is False
    report = audit_run.audit_target(audit_run.local_target(source), [audit_run.AuditKey("random.key", "0" * 64, key)],
                                    audit_run.Settings(sequential=False))
    assert report.status() == 0 and report.info["model_digest_computed"] == key.model_digest


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    model, key = root / "m.safetensors", root / "natural.key"
    assert cli("train", "--arch", "lenet5", "--data", "digits", "--epochs", 2, "--out", model).exit_code == 0
    assert cli("mark", "natural", "--model", model, "--n", 30, "--out", key, "--unsigned").exit_code == 0
    return model, key


@contextlib.contextmanager
def _endpoint(path):
    """``nnmark serve`` of the model at ``path``, with its card, as model "m" on a free port."""
    loaded = models.load_any(str(path))
    app = create_app(envs.get("float32").oracle(loaded.model, loaded.input_shape), model_name="m",
                     card={"model_card": loaded.card.to_dict()})
    with serving(app) as url:
        yield url


def test_a_fleet_gets_the_endpoint_shape_flags_and_audit_keeps_its_own_batch_size(digits_model, monkeypatch):
    model, key = digits_model
    specs = []

    def spying(spec, **kwargs):
        specs.append((spec, kwargs))
        return connect(spec, **kwargs)

    connect = oracles.connect
    monkeypatch.setattr(oracles, "connect", spying)
    with _endpoint(model) as a, _endpoint(model) as b:
        r = cli("audit", key, "--endpoint", a, "--endpoint", b, "--model-name", "m", "--timeout", 7.5, "--retries", 1,
                "--transport", "rest-binary", "--batch-size", 4, "--budget", 500, "--unsigned", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(spec.url for spec, _ in specs) == sorted([a, b])
    for spec, kwargs in specs:
        assert (spec.timeout, spec.retries, spec.transport, spec.model_name) == (7.5, 1, "rest-binary", "m")
        assert spec.batch_size is None and kwargs["budget"] == 500  # requests follow the server's max_batch_size
    report = json.loads(r.stdout)
    assert report["meta"]["batch_size"] == 4 and [t["status"] for t in report["targets"]] == [0, 0]


def test_verify_endpoint_gets_its_normalize_as_a_value(digits_model):
    model, key = digits_model
    with _endpoint(model) as url:
        r = cli("verify", key, "--endpoint", url, "--model-name", "m", "--normalize", "0.5,0.25", "--unsigned")
    assert r.exit_code == 2 and "--normalize says 0.5,0.25" in r.stderr, r.output


# --- refused before any work ----------------------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Makes loading data or a model, training and building shadow models fail loudly: a refusal must come first."""
    from nnmark import data
    from nnmark.marks.ownership import shadow

    def work(*args, **kwargs):
        raise AssertionError("work was done before the refusal")

    for owner, name in ((data, "load"), (data, "load_for"), (models, "load_any"), (models, "train"),
                        (shadow, "build_pool"), (keys, "load")):
        monkeypatch.setattr(owner, name, work)


@pytest.mark.parametrize("value", ["garbage", "0,0", "0.5", "0.5,nan", "1,2,3"])
def test_a_bad_normalize_is_refused_when_parsed(value, no_work, tmp_path):
    assert "--normalize" in refused("train", "--model", FACTORY, "--input-shape", SHAPE, "--normalize", value,
                                    "--data", "digits", "--out", tmp_path / "m.safetensors")
    assert "--normalize" in refused("verify", tmp_path / "k.key", "--endpoint", "http://127.0.0.1:9",
                                    "--normalize", value, "--unsigned")


@pytest.mark.parametrize("option", [("--normalize", "imagenet"), ("--input-shape", SHAPE),
                                    ("--weights", "w.safetensors")])
def test_source_options_go_with_model_only(option, no_work, tmp_path):
    line = refused("train", "--arch", "lenet5", "--data", "digits", *option, "--out", tmp_path / "m.safetensors")
    assert f"{option[0]}: only with --model" in line
    assert "as they are (no --normalize)" in " ".join(cli("train", "--help").output.split())  # --help says so


@pytest.mark.parametrize("args", [
    ("verify", "{key}", "--endpoint", "http://127.0.0.1:9", "--timeout", "{bad}", "--unsigned"),
    ("audit", "{key}", "--endpoint", "http://127.0.0.1:9", "--timeout", "{bad}", "--unsigned"),
    ("audit", "{key}", "--model", "m.safetensors", "--alpha", "{bad}", "--unsigned"),
    ("train", "--arch", "lenet5", "--data", "digits", "--lr", "{bad}", "--out", "{tmp}/m.safetensors"),
    ("mark", "dbi", "--model", "m.safetensors", "--eps", "{bad}", "--out", "{tmp}/k.key", "--unsigned"),
    ("mark", "metafinger", "--model", "m.safetensors", "--lam", "{bad}", "--out", "{tmp}/k.key", "--unsigned"),
    ("attack", "noise", "--model", "m.safetensors", "--std", "{bad}", "--out", "{tmp}/o.safetensors"),
], ids=lambda a: "-".join(a[:2]))
@pytest.mark.parametrize("bad", ["inf", "nan", "-inf"])
def test_float_options_refuse_non_finite_values(args, bad, no_work, tmp_path):
    line = refused(*(a.format(key=tmp_path / "k.key", bad=bad, tmp=tmp_path) for a in args))
    assert "Invalid value" in line and ("finite" in line or "range" in line)


def test_serve_refuses_one_port_for_rest_and_grpc_before_anything_starts(no_work, tmp_path):
    line = refused("serve", "--model", tmp_path / "missing.safetensors", "--port", 8471, "--grpc-port", 8471)
    assert "--grpc-port 8471 is --port" in line  # not the missing model, and no serving banner


@pytest.mark.parametrize("setting", [("--n", 0), ("--candidates", 0), ("--epochs", 0), ("--threshold", 2)])
def test_mark_settings_are_checked_before_the_model_and_shadow_pools(setting, no_work, tmp_path):
    line = refused("mark", "metafinger", "--model", tmp_path / "missing.safetensors", *setting,
                   "--cache-dir", tmp_path / "cache", "--out", tmp_path / "k.key", "--unsigned")
    assert "need" in line and not (tmp_path / "cache").exists()
