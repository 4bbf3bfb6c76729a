"""Issue 24: shadow pools on a device (``build_pool(device=)``, its executors, ``mark metafinger --device``), with the
few CUDA calls answered here (CI has no card), as the ``bench scale --device cuda`` test does."""

import json

import pytest
import torch
from click.testing import CliRunner

from nnmark import models
from nnmark.cli import main
from nnmark.errors import ArgumentError, NnmarkError
from nnmark.marks.ownership import shadow
from nnmark.marks.ownership.shadow import ShadowSpec, build_pool


@pytest.fixture
def moves(monkeypatch):
    """The devices modules are sent to (``nn.Module.to``); "cuda" is answered with the CPU."""
    sent = []
    to = torch.nn.Module.to

    def fake_to(self, *args, **kwargs):
        device = args[0] if args else kwargs.get("device")
        if isinstance(device, (str, torch.device)):
            sent.append(str(device))
            return to(self, "cpu")
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", fake_to)
    monkeypatch.setattr("nnmark.envs.resolve_device", lambda d: "cuda" if d == "cuda" else "cpu")
    return sent


def test_a_pool_trains_each_model_on_its_device_and_caches_the_same_files(moves, tmp_path):
    scratch = ShadowSpec("lenet5", "digits", 81, epochs=1)
    augmented = ShadowSpec("lenet5", "digits", 82, augment_alpha=3.0, augment_seed=1, epochs=1, finetune_epochs=1)
    on_card = build_pool([scratch, augmented], cache_dir=tmp_path / "card", executor="serial", device="cuda")
    # the scratch model, the augmented spec's implied base (trained from scratch), then that base sent to the card
    # for its augmentation: three moves, none for a model the pool only reads back
    assert moves.count("cuda") == 3
    moves.clear()
    on_cpu = build_pool([scratch, augmented], cache_dir=tmp_path / "cpu", executor="serial")
    assert "cuda" not in moves
    for a, b in zip(on_card.paths, on_cpu.paths):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()  # the cache does not depend on the device
    assert all(p.device.type == "cpu" for m in on_card.models for p in m.parameters())


def test_a_pool_refuses_a_device_that_is_not_here(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ArgumentError, match="not available"):
        build_pool([ShadowSpec("lenet5", "digits", 83, epochs=1)], cache_dir=tmp_path, executor="serial",
                   device="cuda")
    assert not list(tmp_path.iterdir())  # refused before anything trained


class _FakeRay:
    """The few Ray calls ``_ray_runner`` makes when it submits: the task's resources and each call's arguments."""

    def __init__(self):
        self.options, self.calls = None, []

    def remote(self, **options):
        self.options = options
        ray = self

        class Remote:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, *args, **kwargs):
                ray.calls.append((args, kwargs))
                return len(ray.calls)

        return Remote


@pytest.mark.parametrize("device, gpus, task_device", [("cuda:1", 1, "cuda"), ("cpu", 0, "cpu")])
def test_ray_tasks_ask_for_a_gpu_and_train_on_the_one_ray_gives(device, gpus, task_device):
    ray = _FakeRay()
    runner = shadow._ray_runner(ray, None, device)
    assert ray.options == {"num_cpus": 1, "num_gpus": gpus}
    runner.run([("spec", None, "digits")])  # submits at once; the results are waited for lazily
    assert ray.calls == [(("spec", None, "digits"), {"device": task_device})]


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = models.build("lenet5", (1, 8, 8), 10)
    path = tmp_path / "m.safetensors"
    models.save(model, models.ModelConfig("lenet5", (1, 8, 8), 10, data="digits"), path)
    return path


def test_mark_metafinger_builds_its_pools_on_the_device_given(tmp_path, monkeypatch):
    seen = {}

    def build_pool(specs, **kwargs):
        seen.update(kwargs)
        raise NnmarkError("pools stop here")

    monkeypatch.setattr("nnmark.envs.resolve_device", lambda d: d)
    monkeypatch.setattr(shadow, "build_pool", build_pool)
    (tmp_path / "secret").write_bytes(b"pool device secret")
    r = CliRunner().invoke(main, ["mark", "metafinger", "--model", str(_checkpoint(tmp_path)), "--secret-file",
                                  str(tmp_path / "secret"), "--device", "cuda", "--cache-dir", str(tmp_path / "c"),
                                  "--out", str(tmp_path / "k.key"), "--json"])
    assert r.exit_code == 2 and seen["device"] == "cuda"
    assert json.loads(r.stdout)["error"] == "pools stop here" and not (tmp_path / "k.key").exists()


def test_mark_metafinger_refuses_a_device_that_is_not_here_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    (tmp_path / "secret").write_bytes(b"pool device secret")
    r = CliRunner().invoke(main, ["mark", "metafinger", "--model", str(_checkpoint(tmp_path)), "--secret-file",
                                  str(tmp_path / "secret"), "--device", "cuda:3", "--out", str(tmp_path / "k.key")])
    assert r.exit_code == 2 and "not available" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "k.key").exists()


def test_sacs_scratch_models_train_on_the_device_and_come_back_to_the_cpu_without_a_device_option(moves):
    from nnmark import data
    from nnmark.attacks.distill import build_student
    from nnmark.data import Split
    from nnmark.marks import METHODS
    from nnmark.marks.ownership import sac
    from nnmark.marks.spec import INPUTS

    assert "device" in INPUTS["shadow"][1] and "device" not in {o.name for o in METHODS["sac"].options}
    ds = data.load("digits")
    source = build_student("lenet5", ds.shape, 10, seed=0)
    made = sac.scratch_models(source, Split(ds.train.x[:64], ds.train.y[:64]), 2, epochs=1, seed=0, device="cuda")
    assert moves.count("cuda") == 2  # each scratch model sent to the card once to train
    assert all(p.device.type == "cpu" for m in made for p in m.parameters())
