"""--device everywhere, and the environment a key records: where it was made, what verify says when it differs, and
the rule that keeps a fragile key from answering TAMPERED for a change of numerics alone."""

import json

import pytest
import torch
from click.testing import CliRunner

import nnmark
from nnmark import envs, keyinfo, keys, marks, models
from nnmark.cli import main
from nnmark.cli.bench import _on_device
from nnmark.cli._shared import CliError
from nnmark.errors import ArgumentError, EnvironmentMismatch, NnmarkError
from nnmark.marks.integrity import dbi
from nnmark.marks.verdict import Verdict
from nnmark.oracles import EndpointOracle, TorchOracle
from nnmark.oracles.local import CUDA_FLAGS, cuda_flags
from test_kill_envs import ByDtype

CPU_ENVS = ("float32", "float64", "mkldnn-off", "batch1")
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits_model():
    from nnmark import data

    ds = data.load("digits")
    torch.manual_seed(0)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=2, seed=0)
    return model.eval(), ds


@pytest.fixture
def run(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"device test secret\n")

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None})

    invoke.secret = secret
    return invoke


@pytest.fixture
def with_cuda(monkeypatch):
    """This machine as if it had two CUDA devices (nothing is ever run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# --- the device value -----------------------------------------------------------------------------------


def test_resolve_device_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(envs, "accelerators", lambda: [])
    assert envs.resolve_device("cpu") == "cpu" and envs.resolve_device(" Auto ") == "cpu"
    for missing in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ArgumentError, match="not available here"):
            envs.resolve_device(missing)
    for bad in ("gpu", "cpu:0", "mps:1", "cuda:", "cuda:-1", ""):
        with pytest.raises(ArgumentError, match="expected cpu, cuda, cuda:N, mps or auto"):
            envs.resolve_device(bad)


def test_auto_picks_cuda_then_mps(with_cuda, monkeypatch):
    assert envs.accelerators()[0] == "cuda"
    assert envs.resolve_device("auto") == "cuda" and envs.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ArgumentError, match="2 CUDA device"):
        envs.resolve_device("cuda:2")
    monkeypatch.setattr(envs, "accelerators", lambda: ["mps"])
    assert envs.resolve_device("auto") == "mps"


def test_cpu_only_environments_refuse_another_device(digits_model):
    model, _ = digits_model
    with pytest.raises(NnmarkError, match="runs on the CPU only, not on cuda"):
        envs.Environment("cpu-only", "", factory=lambda m, s, **k: None).oracle(model, SHAPE, device="cuda")
    assert envs.get("float64").oracle(model, SHAPE, device="cpu").environment()["dtype"] == "float64"


def test_bench_takes_device_where_it_can():
    def with_device(*, quick, device):
        pass

    def cpu_only(*, quick):
        pass

    assert _on_device(with_device, "scale", "cuda") == {"device": "cuda"}
    assert _on_device(cpu_only, "dbi", "cpu") == {}
    with pytest.raises(CliError, match="bench dbi runs on the CPU only"):
        _on_device(cpu_only, "dbi", "cuda")


COMMANDS = {
    "train": ["train", "--arch", "lenet5", "--data", "digits", "--out", "{tmp}/m.safetensors"],
    "mark": ["mark", "dbi", "--model", "{tmp}/m.safetensors", "--out", "{tmp}/k.key"],
    "attack": ["attack", "noise", "--model", "{tmp}/m.safetensors", "--out", "{tmp}/n.safetensors"],
    "verify": ["verify", "{tmp}/k.key", "--model", "{tmp}/m.safetensors"],
    "identify": ["identify", "{tmp}/k.key", "--model", "{tmp}/m.safetensors"],
    "audit": ["audit", "{tmp}/k.key", "--model", "{tmp}/m.safetensors"],
    "serve": ["serve", "--model", "{tmp}/m.safetensors"],
    "bench": ["bench", "dbi", "--quick", "--out-dir", "{tmp}"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_device(run, tmp_path, command):
    args = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    assert "--device" in run(*args[:2 if command in ("mark", "attack", "bench") else 1], "--help").output
    r = run(*args, "--device", "cuda:7")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device" in lines[0] and "not available here" in lines[0], r.stderr
    assert "Traceback" not in r.output


def test_commands_run_with_device_cpu_and_auto(run, tmp_path):
    model, key, noisy = tmp_path / "m.safetensors", tmp_path / "k.key", tmp_path / "n.safetensors"
    r = run("train", "--arch", "lenet5", "--data", "digits", "--epochs", 1, "--out", model, "--device", "auto")
    assert r.exit_code == 0, r.output
    r = run("mark", "dbi", "--model", model, "--n", 8, "--itr", 20, "--out", key, "--secret-file", run.secret,
            "--device", "auto")
    assert r.exit_code == 0, r.output
    r = run("attack", "noise", "--model", model, "--out", noisy, "--std", 1e-3, "--device", "cpu")
    assert r.exit_code == 0, r.output
    here = envs.resolve_device("auto")  # the key's device: cpu, or the card where one is here
    for device in (here, "auto"):
        r = run("verify", key, "--model", model, "--secret-file", run.secret, "--device", device, "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["device"] == here, r.output
        r = run("audit", key, "--model", model, "--secret-file", run.secret, "--device", device)
        assert r.exit_code == 0, r.output
    r = run("verify", key, "--endpoint", "http://127.0.0.1:9", "--secret-file", run.secret, "--device", "cpu",
            "--timeout", 1, "--retries", 0)
    assert r.exit_code == 2 and "--device" not in r.stderr  # cpu is the default: an endpoint takes it


def test_endpoint_refuses_another_device(run, with_cuda):
    r = run("verify", "k.key", "--endpoint", "http://127.0.0.1:9", "--device", "cuda")
    assert r.exit_code == 2 and "--device: only with --model" in r.stderr, r.output


# --- what the key records -----------------------------------------------------------------------------------


def test_oracle_records_its_environment(digits_model):
    model, _ = digits_model
    here = TorchOracle(model, SHAPE).environment()
    assert {name: here[name] for name in envs.NUMERICS} == envs.DEFAULT_RECORD
    assert {name: here[name] for name in CUDA_FLAGS} == cuda_flags()
    assert here["torch"] == torch.__version__ and here["threads"] == torch.get_num_threads() and here["device_name"]
    assert envs.get("batch1").oracle(model, SHAPE).environment()["batch_size"] == 1
    assert envs.get("mkldnn-off").oracle(model, SHAPE).environment()["mkldnn"] is False


def test_backend_flags_are_set_for_each_call_and_restored(digits_model):
    model, _ = digits_model
    before = cuda_flags()
    flipped = {name: not value for name, value in before.items()}
    oracle = TorchOracle(model, SHAPE, backend_flags=flipped)
    seen = []
    handle = oracle.model.register_forward_hook(lambda *a: seen.append(cuda_flags()))
    oracle.labels(torch.rand(2, *SHAPE))
    handle.remove()
    assert seen[-1] == flipped and cuda_flags() == before
    assert {name: oracle.environment()[name] for name in CUDA_FLAGS} == flipped
    with pytest.raises(ArgumentError, match="backend_flags"):
        TorchOracle(model, SHAPE, backend_flags={"tf32_matmul": True})


def test_key_records_environment_through_api_and_file(digits_model, tmp_path):
    model, ds = digits_model
    key = nnmark.mark("natural", model, ds.test.x[:6], device="auto")
    made_in = key.config[keys.ENVIRONMENT]
    assert made_in["device"] == "cpu" and made_in["dtype"] == "float32" and made_in["torch"] == torch.__version__
    assert set(CUDA_FLAGS) <= set(made_in)
    nnmark.save_key(key, tmp_path / "k.key", secret=b"s")
    loaded = nnmark.load_key(tmp_path / "k.key", secret=b"s")
    assert loaded.config[keys.ENVIRONMENT] == made_in and loaded.queries.device.type == "cpu"
    assert keyinfo.describe(tmp_path / "k.key")["environment"] == made_in


def test_cli_key_records_environment(run, digits_model, tmp_path):
    model, ds = digits_model
    path = tmp_path / "m.safetensors"
    models.save(model, models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="digits"), path)
    r = run("mark", "natural", "--model", path, "--n", 6, "--out", tmp_path / "k.key", "--secret-file", run.secret,
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = run("keys", "show", tmp_path / "k.key", "--json")
    made_in = json.loads(r.stdout)["environment"]
    assert made_in["device"] == "cpu" and made_in["dtype"] == "float32" and "tf32_matmul" in made_in


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_key_made_on_cuda_verifies_on_cpu(digits_model, tmp_path):
    model, ds = digits_model
    key = nnmark.mark("dbi", model, ds.test.x[:20], device="cuda", itr=50)
    assert key.config[keys.ENVIRONMENT]["device"] == "cuda" and key.queries.device.type == "cpu"
    nnmark.save_key(key, tmp_path / "k.key", secret=b"s")
    key = nnmark.load_key(tmp_path / "k.key", secret=b"s")
    try:
        assert nnmark.verify(key, model, device="cpu").passed
    except EnvironmentMismatch as e:
        assert "device cuda -> cpu" in str(e)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("method, settings", [("dbi", {"itr": 200}),
                                              ("pairs", {"n_pairs": 6, "max_itr": 200, "secret": b"s" * 16,
                                                         "user_id": "u", "input_shape": SHAPE})])
@pytest.mark.parametrize("made", ["cpu", "cuda"])
def test_a_key_made_on_one_device_never_reads_tampered_on_the_other(digits_model, method, settings, made):
    """Issue 24's goal on a real card: the untouched model, verified on both devices, is INTACT or refused with the
    environment named (exit 2), never TAMPERED; on the device it was made on it is INTACT."""
    model, ds = digits_model
    x = ds.test.x[:20] if method == "dbi" else None
    key = nnmark.mark(method, model, x, device=made, **dict(settings))
    assert key.config[keys.ENVIRONMENT]["device"] == made
    for other in ("cpu", "cuda"):
        try:
            verdict = nnmark.verify(key, model, device=other, secret=settings.get("secret"))
        except EnvironmentMismatch as e:
            assert other != made and f"device {made} -> {other}" in str(e)
            continue
        assert verdict.passed, (method, made, other, verdict.flipped)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_a_card_measures_the_auto_micro_batch_on_itself():
    """On a real card: the activations are measured there, against a share of its free memory (at least 1 GiB), and
    a training step at auto runs on the card."""
    from nnmark.models import training

    model = models.build("resnet18", (3, 32, 32), 10).cuda().train()
    x = torch.rand(64, 3, 32, 32, device="cuda")
    assert training.activation_budget(torch.device("cuda")) >= training.ACTIVATION_BUDGET
    assert training.saved_bytes_per_image(model, x) == pytest.approx(
        training.saved_bytes_per_image(model.cpu(), x.cpu()), rel=0.01)
    model.cuda()
    assert training.resolve_micro_batch("auto", model, x, 64) is None  # a card's batch of 64 fits whole
    with training.micro_batches("auto"):
        training.fit(model, x, torch.arange(64, device="cuda") % 10, lr=1e-3, steps=1, batch_size=64)


# --- the cross-environment rule ---------------------------------------------------------------------


@pytest.mark.parametrize("made", CPU_ENVS)
def test_cpu_environments_never_give_a_false_tampered(digits_model, made):
    model, ds = digits_model
    key = envs.stamp(dbi.create(envs.get(made).oracle(model, SHAPE), ds.test.x[:20], itr=100),
                     envs.get(made).oracle(model, SHAPE))
    for other in CPU_ENVS:
        try:
            verdict = marks.verify(envs.get(other).oracle(model, SHAPE), key)
        except EnvironmentMismatch as e:
            assert other != made and "another environment" in str(e)
            continue
        assert verdict.passed, (made, other, verdict.flipped)
        assert bool(verdict.details["environment"]["differs"]) == (other != made)


def _natural_key(p):
    source = ByDtype(p, p)
    return nnmark.mark("natural", source, torch.rand(3, *SHAPE))


def test_environment_alone_flipping_a_key_is_refused():
    key = _natural_key([0.6, 0.3, 0.1])
    suspect = ByDtype([0.6, 0.3, 0.1], [0.3, 0.6, 0.1])  # unchanged model; float64 numerics flip it
    assert marks.verify(TorchOracle(suspect, SHAPE), key).passed
    with pytest.raises(EnvironmentMismatch, match=r"dtype float32 -> float64\): 3 of its 3 queries.*--env float32"):
        marks.verify(TorchOracle(suspect, SHAPE, dtype=torch.float64), key)
    verdict = marks.verify(TorchOracle(suspect, SHAPE, dtype=torch.float64), key, accept_environment=True)
    assert not verdict.passed and verdict.details["environment"]["accepted"]
    assert envs.note_line(verdict.details["environment"]).endswith("at the owner's risk (--accept-environment)")


@pytest.mark.parametrize("p64, refused", [([0.32, 0.40, 0.28], True),    # margin 0.05 <= 2 x spread 0.03
                                          ([0.33, 0.40, 0.27], False)])  # margin 0.05 > 2 x spread 0.02
def test_a_failed_key_within_the_spread_is_refused(p64, refused):
    key = _natural_key([0.6, 0.3, 0.1])
    suspect = ByDtype([0.35, 0.40, 0.25], p64)  # tampered: label 1 in both environments
    oracle = TorchOracle(suspect, SHAPE, dtype=torch.float64)
    if refused:
        with pytest.raises(EnvironmentMismatch, match="3 of its 3 queries"):
            marks.verify(oracle, key)
        return
    verdict = marks.verify(oracle, key)
    assert verdict.decision == "tampered" and verdict.details["environment"]["at_risk"] == 0
    assert "so the verdict stands" in envs.note_line(verdict.details["environment"])


def test_same_environment_notes_nothing_and_older_keys_note_nothing():
    key = _natural_key([0.6, 0.3, 0.1])
    tampered = TorchOracle(ByDtype([0.3, 0.6, 0.1], [0.3, 0.6, 0.1]), SHAPE)
    verdict = marks.verify(tampered, key)
    assert verdict.decision == "tampered" and verdict.details["environment"]["differs"] == {}
    assert envs.note_line(verdict.details["environment"]) is None
    del key.config[keys.ENVIRONMENT]
    assert "environment" not in marks.verify(tampered, key).details


class _Endpoint(EndpointOracle):
    """An endpoint oracle that is never asked: what ``check_environment`` sees of one."""

    def __init__(self, published=None):
        self.metadata = {"parameters": {"environment": published}} if published else {}


FAILED = Verdict("natural", "tampered", False, "change_rate", 1.0)


def test_endpoint_rule_is_the_recorded_environment_alone():
    key = _natural_key([0.6, 0.3, 0.1])
    assert envs.check_environment(_Endpoint(), key, FAILED, fragile=True)["differs"] == {}
    on_gpu = {**key.config[keys.ENVIRONMENT], "device": "cuda"}
    published = {**key.config[keys.ENVIRONMENT], "dtype": "bfloat16"}
    for recorded, endpoint in ((on_gpu, _Endpoint()), (key.config[keys.ENVIRONMENT], _Endpoint(published))):
        key.config[keys.ENVIRONMENT] = recorded
        with pytest.raises(EnvironmentMismatch, match="an endpoint is taken to run on the CPU"):
            envs.check_environment(endpoint, key, FAILED, fragile=True)
        assert envs.check_environment(endpoint, key, FAILED, fragile=True, accept=True)["accepted"]
        assert envs.check_environment(endpoint, key, FAILED, fragile=False)["differs"]
        passed = Verdict("natural", "intact", True, "change_rate", 0.0)
        assert envs.check_environment(endpoint, key, passed, fragile=True)["differs"]


def test_key_environment_not_here_is_refused(with_cuda, monkeypatch):
    key = _natural_key([0.6, 0.3, 0.1])
    key.config[keys.ENVIRONMENT] = {**key.config[keys.ENVIRONMENT], "device": "cuda"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tampered = TorchOracle(ByDtype([0.3, 0.6, 0.1], [0.3, 0.6, 0.1]), SHAPE)
    with pytest.raises(EnvironmentMismatch, match=r"device cuda -> cpu.*cannot run here.*--device cuda --env float32"):
        marks.verify(tampered, key)


def test_api_device_is_checked(digits_model, with_cuda):
    model, ds = digits_model
    key = nnmark.mark("natural", model, ds.test.x[:4])
    with pytest.raises(ArgumentError, match="an oracle or an endpoint runs where it is"):
        nnmark.verify(key, TorchOracle(model, SHAPE), device="cuda")
    with pytest.raises(ArgumentError, match="unknown device"):
        nnmark.attack("noise", model, device="tpu")
    attacked = nnmark.attack("noise", model, std=1e-3, device="cpu")
    assert next(attacked.parameters()).device.type == "cpu"


@pytest.mark.skipif("onnxruntime" not in envs.ENVIRONMENTS, reason="ONNX Runtime is not installed")
def test_cli_refuses_a_fragile_verdict_it_cannot_compare(run, digits_model, tmp_path):
    model, ds = digits_model
    path, noisy, key = tmp_path / "m.safetensors", tmp_path / "n.safetensors", tmp_path / "k.key"
    models.save(model, models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="digits"), path)
    assert run("mark", "natural", "--model", path, "--n", 30, "--out", key, "--secret-file", run.secret).exit_code == 0
    assert run("attack", "noise", "--model", path, "--out", noisy, "--std", 0.3).exit_code == 0
    args = ("--model", noisy, "--secret-file", run.secret, "--env", "onnxruntime")
    r = run("verify", key, *args)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "runtime torch -> OnnxOracle" in r.stderr and "--accept-environment" in r.stderr
    r = run("verify", key, *args, "--accept-environment")
    assert r.exit_code == 1 and "at the owner's risk" in r.stderr, r.output
    r = run("audit", key, *args, "--no-sequential")
    assert r.exit_code == 2 and "another environment" in r.stdout, r.output
    r = run("audit", key, *args, "--no-sequential", "--accept-environment")
    assert r.exit_code == 1 and "owner's risk" in r.stdout, r.output
    r = run("verify", key, "--model", path, "--secret-file", run.secret, "--env", "float64")
    assert r.exit_code == 0 and "note: the key was made in another environment (dtype float32 -> float64)" in r.stderr


def test_calibration_environments_include_cuda_where_present(with_cuda, monkeypatch):
    monkeypatch.setattr(envs, "ENVIRONMENTS", {**envs.ENVIRONMENTS, "cuda": envs.KNOWN["cuda"]})
    assert envs.calibration_environments() == ["float64", "mkldnn-off", "batch1", "cuda"]
    monkeypatch.setattr(envs, "ENVIRONMENTS", {k: v for k, v in envs.ENVIRONMENTS.items() if k != "cuda"})
    assert envs.calibration_environments() == ["float64", "mkldnn-off", "batch1"]


def test_a_micro_batch_is_the_whole_batchs_numerics_and_one_sample_per_call_is_not():
    base = dict(envs.DEFAULT_RECORD)
    assert envs.differences({**base, "batch_size": 16}, base) == {}
    assert envs.differences({**base, "batch_size": 16}, {**base, "batch_size": 64}) == {}
    assert envs.differences({**base, "batch_size": 1}, base) == {"batch_size": [1, None]}
    assert envs.differences(base, {**base, "batch_size": 1}) == {"batch_size": [None, 1]}
