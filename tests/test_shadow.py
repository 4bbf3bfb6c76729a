"""Shadow-model pools: specs, from-scratch and augmented models (zoo and package.module:factory), the on-disk cache,
worker processes and Ray."""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import foreign_models
from nnmark import data, models
from nnmark.attacks import relative_weight_noise
from nnmark.attacks.adversarial import adversarial_train, robust_accuracy
from nnmark.errors import ArgumentError, ModelError, NnmarkError
from nnmark.marks.ownership import shadow
from nnmark.marks.ownership.shadow import PoolLayout, ShadowSpec, build_pool, pool_specs, pool_specs_for, train_shadow
from nnmark.models import ModelCard, Normalized, load_any
from nnmark.models.card import unwrap

FACTORY = "foreign_models:small_gn_net"  # tests/ is on sys.path (rootdir conftest), as a user's folder would be
CARD = ModelCard(foreign_models.INPUT_SHAPE, foreign_models.NUM_CLASSES, normalize=foreign_models.MEAN_STD)
NORMALIZE = ",".join(map(str, foreign_models.MEAN_STD[0] + foreign_models.MEAN_STD[1]))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def base_model():
    return train_shadow(ShadowSpec("lenet5", "digits", seed=0, epochs=6))


def _cache_files(specs: list[ShadowSpec]) -> set[str]:
    """The names of the cache's model and record files for ``specs``."""
    return {name for s in specs for name in (s.cache_name(), s.cache_name().removesuffix(".safetensors") + ".json")}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[n], sb[n], atol=1e-5) for n in sa)


def test_spec_json_round_trip_and_cache_name():
    spec = ShadowSpec("lenet5", "digits", 3, augment_alpha=2, augment_seed=5, epochs=4)
    assert isinstance(spec.augment_alpha, float)
    assert ShadowSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["augment_alpha"] == 2.0
    assert spec.cache_name() == ShadowSpec.from_json(spec.to_json()).cache_name()
    assert spec.cache_name().startswith("lenet5-") and spec.cache_name().endswith(".safetensors")
    others = [spec.base(), ShadowSpec("lenet5", "digits", 3, 2, 6, epochs=4),
              ShadowSpec("lenet5", "digits", 3, 3, 5, epochs=4)]
    assert len({spec.cache_name(), *(o.cache_name() for o in others)}) == 4
    assert spec.base() == ShadowSpec("lenet5", "digits", 3, epochs=4) and not spec.base().augmented
    chunked = dataclasses.replace(spec, micro_batch=8)  # written only when set: earlier specs keep their names
    assert "micro_batch" not in json.loads(spec.to_json()) and json.loads(chunked.to_json())["micro_batch"] == 8
    assert ShadowSpec.from_json(chunked.to_json()) == chunked and chunked.cache_name() != spec.cache_name()
    assert chunked.base().micro_batch == 8  # its base trains in the same chunks


@pytest.mark.parametrize("kwargs, error", [
    ({"arch": "nope"}, ModelError),
    ({"augment_alpha": 2.0}, ValueError),
    ({"augment_seed": 1}, ValueError),
    ({"augment_alpha": 0.0, "augment_seed": 1}, ValueError),
    ({"augment_alpha": float("nan"), "augment_seed": 1}, ValueError),
    ({"epochs": 0}, ValueError),
    ({"seed": 1.5}, ValueError),
    ({"base_digest": "0" * 64}, ValueError),
    ({"augment_alpha": 2.0, "augment_seed": 1, "base_digest": "xyz"}, ValueError),
    ({"micro_batch": 0}, ValueError),
    ({"micro_batch": 2.5}, ValueError),
    ({"micro_batch": True}, ValueError),
])
def test_spec_rejects_bad_fields(kwargs, error):
    fields = {"arch": "lenet5", "data": "digits", "seed": 0, **kwargs}
    with pytest.raises(error):
        ShadowSpec(**fields)


def test_from_scratch_is_deterministic_and_independent_by_seed(base_model, digits):
    again = train_shadow(ShadowSpec("lenet5", "digits", seed=0, epochs=6))
    other = train_shadow(ShadowSpec("lenet5", "digits", seed=1, epochs=6))
    assert models.digest(again) == models.digest(base_model)
    assert models.digest(other) != models.digest(base_model)
    assert models.accuracy(base_model, digits.test) > 0.8 and models.accuracy(other, digits.test) > 0.8


def test_augmentation_is_eq1_noise_then_finetune_that_recovers_accuracy(base_model, digits, monkeypatch):
    calls = []

    def spy(model, alpha, *, seed):
        calls.append((alpha, seed))
        return relative_weight_noise(model, alpha, seed=seed)

    monkeypatch.setattr(shadow, "relative_weight_noise", spy)
    spec = ShadowSpec("lenet5", "digits", 0, augment_alpha=1.5, augment_seed=7, epochs=6, finetune_epochs=2,
                      base_digest=models.digest(base_model))
    augmented = train_shadow(spec, base_model)
    assert calls == [(1.5, 7)]
    noisy_acc = models.accuracy(relative_weight_noise(base_model, 1.5, seed=7), digits.test)
    base_acc, aug_acc = models.accuracy(base_model, digits.test), models.accuracy(augmented, digits.test)
    assert noisy_acc < base_acc - 0.2  # eq. 1 at alpha 1.5 hurts ...
    assert aug_acc > base_acc - 0.05  # ... and the fine-tune on the owner's data recovers it
    assert models.digest(augmented) != models.digest(base_model)
    with pytest.raises(ValueError):
        train_shadow(spec)  # a given base is needed
    with pytest.raises(ModelError):
        train_shadow(spec, train_shadow(ShadowSpec("lenet5", "digits", seed=2, epochs=1)))  # wrong base


def test_a_spec_with_a_micro_batch_trains_in_chunks_of_it(digits, training_passes):
    """Every training forward pass (a from-scratch base, then its eq. 1 fine-tune) sees at most micro_batch images."""
    trained, _ = training_passes(lambda: train_shadow(ShadowSpec(
        "lenet5", "digits", 0, augment_alpha=3.0, augment_seed=1, epochs=1, finetune_epochs=1, micro_batch=5),
        dataset=digits))
    assert trained and max(trained) == 5


def test_pool_builds_in_worker_processes_then_reuses_the_cache(base_model, tmp_path):
    digest = models.digest(base_model)
    specs = [
        ShadowSpec("lenet5", "digits", 11, epochs=1),
        ShadowSpec("lenet5", "digits", 12, augment_alpha=3.0, augment_seed=1, epochs=1, finetune_epochs=1),
        ShadowSpec("lenet5", "digits", 0, augment_alpha=3.0, augment_seed=2, finetune_epochs=1, base_digest=digest),
    ]
    pool = build_pool(specs, cache_dir=tmp_path, base=base_model, workers=2, executor="process")
    assert len(pool) == 3 and pool.specs == specs
    # the augmented negative needed its from-scratch base, built (and cached) too
    assert set(pool.trained) == {*specs, specs[1].base()}
    assert all(p.exists() and p.with_suffix(".json").exists() for p in pool.paths)
    assert {p.name for p in tmp_path.iterdir()} == _cache_files(pool.trained)  # models and records, nothing else
    record = json.loads(pool.paths[0].with_suffix(".json").read_text())
    assert ShadowSpec(**record["spec"]) == specs[0] and 0 <= record["test_accuracy"] <= 1
    assert _same(pool[0], train_shadow(specs[0]))  # a worker builds what this process would
    assert _same(pool[2], train_shadow(specs[2], base_model))
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    again = build_pool(specs, cache_dir=tmp_path, base=base_model, workers=2, executor="process")
    assert again.trained == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes
    assert all(models.digest(a) == models.digest(b) for a, b in zip(pool.models, again.models))
    assert again.select([specs[2], specs[0]])[0] is again[2]


def test_every_executor_trains_a_spec_to_the_same_weights_whatever_the_callers_threads(base_model, tmp_path):
    spec = ShadowSpec("lenet5", "digits", 11, epochs=1)
    workers = build_pool([spec], cache_dir=tmp_path / "process", workers=1, executor="process")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the sums of a step run in another order with two threads than with one
    try:
        serial = build_pool([spec], cache_dir=tmp_path / "serial", executor="serial")
        assert torch.get_num_threads() == 2  # given back
    finally:
        torch.set_num_threads(threads)
    assert models.digest(serial[0]) == models.digest(workers[0])


def _checkpoint(model: torch.nn.Module, ds, tmp_path) -> bytes:
    path = tmp_path / "given.safetensors"
    models.save(model, models.ModelConfig("lenet5", ds.shape, ds.num_classes), path)
    return path.read_bytes()


def test_a_task_takes_bytes_and_data_and_returns_checkpoint_bytes(base_model, digits, tmp_path):
    spec = ShadowSpec("lenet5", "digits", 0, augment_alpha=3.0, augment_seed=4, finetune_epochs=1,
                      base_digest=models.digest(base_model))
    checkpoint, record = shadow.build_task(spec.to_json(), _checkpoint(base_model, digits, tmp_path), "digits")
    (tmp_path / "out.safetensors").write_bytes(checkpoint)
    model, config = models.load(tmp_path / "out.safetensors")
    assert _same(model, train_shadow(spec, base_model))
    record = json.loads(record)
    assert record["spec"] == json.loads(spec.to_json()) and config.accuracy == record["test_accuracy"]
    scratch = ShadowSpec("lenet5", "digits", 61, epochs=1).to_json()
    by_tensors, by_name = (shadow.build_task(scratch, None, d)[0] for d in (digits, "digits"))
    assert by_tensors == by_name  # the data as tensors gives the same model as its bundled name
    with pytest.raises(ValueError, match="mnist5k"):
        shadow.build_task(ShadowSpec("lenet5", "mnist5k", 61).to_json(), None, digits)


def test_pool_reports_each_model_it_builds_once(tmp_path, capsys):
    augmented = ShadowSpec("lenet5", "digits", 71, augment_alpha=3.0, augment_seed=1, epochs=1, finetune_epochs=1)
    specs = [augmented, ShadowSpec("lenet5", "digits", 72, epochs=1), augmented]
    built = []
    pool = build_pool(specs, cache_dir=tmp_path, executor="serial", progress=True,
                      on_built=lambda spec, record: built.append((spec, record)))
    assert [s for s, _ in built] == pool.trained and len(built) == 3  # the implied base too, the duplicate once
    assert all(record["spec"] == json.loads(s.to_json()) and 0 <= record["test_accuracy"] <= 1
               for s, record in built)
    assert "shadow models" in capsys.readouterr().err  # the tqdm bar
    groups = pool.groups({"one": [specs[1]], "two": [specs[1], specs[0]]})
    assert groups == {"one": [pool[1]], "two": [pool[1], *pool.select([specs[0]])]}
    built.clear()
    assert build_pool(specs, cache_dir=tmp_path, executor="serial", on_built=built.append).trained == built == []


def test_pool_rejects_bad_arguments(base_model, tmp_path):
    spec = ShadowSpec("lenet5", "digits", 0, augment_alpha=3.0, augment_seed=1, base_digest="0" * 64)
    with pytest.raises(ModelError):
        build_pool([spec], cache_dir=tmp_path, base=base_model, executor="serial")
    with pytest.raises(ModelError):
        build_pool([spec], cache_dir=tmp_path, executor="serial")
    with pytest.raises(ValueError):
        build_pool([], cache_dir=tmp_path, executor="threads")
    with pytest.raises(ValueError):
        build_pool([], cache_dir=tmp_path, workers=0)


def test_pool_specs_lay_out_metafinger_meta_data():
    specs = pool_specs("lenet5", "digits", "a" * 64, PoolLayout(negatives=3, val_negatives=2, af=3, alpha=2.0), seed=5)
    assert list(specs) == ["positives_train", "negatives_train", "positives_val", "negatives_val"]
    pos = specs["positives_train"] + specs["positives_val"]
    assert (len(specs["positives_train"]), len(specs["positives_val"])) == (2, 1)
    assert all(s.base_digest == "a" * 64 and s.augment_alpha == 2.0 for s in pos)
    neg = specs["negatives_train"]
    assert len(neg) == 3 * (1 + 3) and {s.seed for s in neg} == {6, 7, 8}
    assert [s.seed for s in specs["negatives_val"]] == [9, 10] and not any(s.augmented for s in specs["negatives_val"])
    everything = [s for group in specs.values() for s in group]
    assert len({s.cache_name() for s in everything}) == len(everything)  # no two specs alike
    assert 5 not in {s.seed for s in everything if s.base_digest is None}  # no negative repeats the source
    assert {s.micro_batch for s in everything} == {None}
    chunked = pool_specs("lenet5", "digits", "a" * 64, PoolLayout(micro_batch=4).thief_aware(), seed=5)
    assert {s.micro_batch for group in chunked.values() for s in group} == {4}
    with pytest.raises(ValueError):
        PoolLayout(negatives=0)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert shadow.default_cache_dir() == tmp_path / "nnmark" / "shadow"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert shadow.default_cache_dir().parts[-3:] == (".cache", "nnmark", "shadow")


def _guard(forbidden: list[str], report: str):
    """A Ray worker set-up hook: any file access under ``forbidden`` fails and leaves a note in ``report``.

    Audit hooks see open, listdir, scandir, mkdir, rename, remove and the like; os.stat, os.lstat and
    os.access (behind ``exists()``) are wrapped. The note survives code that swallows the error.
    """

    def install() -> None:
        import os
        import sys

        roots = [os.path.normpath(p) for p in forbidden]

        def touches(arg) -> bool:
            if not isinstance(arg, (str, bytes, os.PathLike)):
                return False
            path = os.path.normpath(os.path.abspath(os.fsdecode(arg)))
            return any(path == r or path.startswith(r + os.sep) for r in roots)

        def refuse(what, arg) -> None:
            with open(os.path.join(report, f"{os.getpid()}-{len(os.listdir(report))}"), "w") as fh:
                fh.write(f"{what} {os.fsdecode(arg)}")
            raise PermissionError(f"a task touched {os.fsdecode(arg)} ({what})")

        def hook(event, args) -> None:
            if event.startswith(("open", "os.", "shutil.")):
                for arg in args:
                    if touches(arg):
                        refuse(event, arg)

        def checked(real):
            def call(path, *args, **kwargs):
                if touches(path):
                    refuse(real.__name__, path)
                return real(path, *args, **kwargs)
            return call

        sys.addaudithook(hook)
        for name in ("stat", "lstat", "access"):
            setattr(os, name, checked(getattr(os, name)))

    return install


@pytest.fixture
def ray_cluster(tmp_path_factory, monkeypatch):
    """A local Ray cluster of a head node without CPUs and two one-CPU nodes, each with its own HOME, on 127.0.0.1."""
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    root = tempfile.mkdtemp(prefix="nnray")  # short: Ray's socket paths must stay under ~107 characters
    os.mkdir(os.path.join(root, "ray"))
    monkeypatch.setenv("RAY_TMPDIR", root)  # the cluster's address file and session folders
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # "127.0.0.1" stays the loopback address
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    local = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **local})
    try:
        for i in range(2):
            home = tmp_path_factory.mktemp(f"node{i}")
            cluster.add_node(num_cpus=1, env_vars={"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")},
                             **local)
        yield ray, cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def test_pool_on_a_two_node_ray_cluster_never_touches_the_drivers_cache(ray_cluster, base_model, digits, tmp_path):
    ray, cluster = ray_cluster
    cache, report = tmp_path / "cache", tmp_path / "report"
    npz = tmp_path / "data" / "digits.npz"  # a user dataset: it travels as tensors, its file stays here
    npz.parent.mkdir()
    np.savez(npz, x=digits.train.x.numpy(), y=digits.train.y.numpy(), x_test=digits.test.x.numpy(),
             y_test=digits.test.y.numpy())
    report.mkdir()
    factory = ShadowSpec(FACTORY, "digits", 33, epochs=1, card=CARD)  # its module travels as the job's py_modules
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook reaches the workers by value
    try:
        hook = _guard([str(cache), str(npz.parent), os.path.dirname(foreign_models.__file__)], str(report))
        ray.init(address=cluster.address, runtime_env={"worker_process_setup_hook": hook,
                                                       "py_modules": shadow.shipped_modules([factory])})
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3 and sorted(n["Resources"].get("CPU", 0) for n in nodes) == [0, 1, 1]

    cache.mkdir()
    probe = ray.remote(num_cpus=1)(lambda path: os.path.exists(path))  # the guard is live on the workers:
    assert ray.get(probe.remote(str(cache)), timeout=120) is False  # the cache exists, but the task may not look
    assert len(list(report.iterdir())) == 1
    shutil.rmtree(report)
    report.mkdir()

    augmented = ShadowSpec("lenet5", "digits", 31, augment_alpha=3.0, augment_seed=1, epochs=1, finetune_epochs=1)
    given = ShadowSpec("lenet5", "digits", 0, augment_alpha=3.0, augment_seed=9, finetune_epochs=1,
                       base_digest=models.digest(base_model))
    user = ShadowSpec("lenet5", f"npz:{npz}", 32, epochs=1)
    specs = [augmented, given, user, factory]
    pool = build_pool(specs, cache_dir=cache, base=base_model, executor="ray", ray_timeout=300)
    assert list(report.iterdir()) == []  # no task read, wrote or looked at the cache, the npz file or tests/
    assert set(pool.trained) == {*specs, augmented.base()} and ray.is_initialized()  # a running cluster stays up
    assert {p.name for p in cache.iterdir()} == _cache_files(pool.trained)  # written by the driver from the bytes
    assert _same(pool[1], train_shadow(given, base_model))  # the bytes crossed intact
    assert _same(pool[2], train_shadow(ShadowSpec("lenet5", "digits", 32, epochs=1)))  # same tensors, same model
    assert _same(pool[3], train_shadow(factory))  # the factory, shipped to the nodes, built the same model
    assert build_pool(specs, cache_dir=cache, base=base_model, executor="ray", ray_timeout=300).trained == []

    ray.shutdown()  # the Ray instance build_pool starts ships the factory's module itself
    again = ShadowSpec(FACTORY, "digits", 34, epochs=1, card=CARD)
    assert build_pool([again], cache_dir=cache, executor="ray", ray_address=cluster.address,
                      ray_timeout=300).trained == [again] and not ray.is_initialized()
    ray.init(address=cluster.address)  # a running instance without it: the task's import error, in one line
    with pytest.raises(ModelError, match="cannot import foreign_models") as e:
        build_pool([dataclasses.replace(again, seed=35)], cache_dir=cache, executor="ray", ray_timeout=300)
    assert "\n" not in str(e.value)


def test_ray_executor_without_ray_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(NnmarkError, match="pip install"):
        build_pool([ShadowSpec("lenet5", "digits", 41, epochs=1)], cache_dir=tmp_path, executor="ray")


# --- the user's own model: package.module:factory ------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """The foreign model (RGB 32x32, normalised) trained on digits converted for it, loaded as a user loads it."""
    model = train_shadow(ShadowSpec(FACTORY, "digits", 0, epochs=1, card=CARD))
    weights = tmp_path_factory.mktemp("foreign") / "w.safetensors"
    models.save_like(load_any(FACTORY, input_shape=CARD.input_shape, normalize=NORMALIZE), model, weights)
    return load_any(FACTORY, weights=weights, input_shape=CARD.input_shape, normalize=NORMALIZE)


@pytest.fixture(scope="module")
def lenet_digits(tmp_path_factory):
    """A LeNet-5 checkpoint trained on digits with seed 3 (its config records both)."""
    model = train_shadow(ShadowSpec("lenet5", "digits", 3, epochs=1))
    path = tmp_path_factory.mktemp("zoo") / "lenet.safetensors"
    models.save(model, models.ModelConfig("lenet5", (1, 8, 8), 10, data="digits", seed=3), path)
    return model, path


def test_a_zoo_spec_keeps_its_cache_name_and_a_card_joins_the_json():
    assert ShadowSpec("lenet5", "digits", 0).cache_name() == "lenet5-3a0ae6efb750b0d2.safetensors"  # as before cards
    spec = ShadowSpec(FACTORY, "mnist5k", 3, augment_alpha=2.0, augment_seed=1, card=CARD.to_dict())
    assert spec.card == CARD and spec.factory and not ShadowSpec("lenet5", "digits", 0).factory
    assert ShadowSpec.from_json(spec.to_json()) == spec and json.loads(spec.to_json())["card"] == CARD.to_dict()
    assert spec.cache_name().startswith("foreign_models-small_gn_net-")
    plain = ModelCard(CARD.input_shape, CARD.num_classes)
    assert spec.cache_name() != ShadowSpec(FACTORY, "mnist5k", 3, 2.0, 1, card=plain).cache_name()
    assert spec.base() == ShadowSpec(FACTORY, "mnist5k", 3, card=CARD)
    with pytest.raises(ValueError, match="card"):
        ShadowSpec(FACTORY, "digits", 0)
    with pytest.raises(ModelError):
        ShadowSpec("foreign_models:", "digits", 0, card=CARD)
    with pytest.raises(ModelError):
        ShadowSpec(FACTORY, "digits", 0, card={"input_shape": [3, 32, 32]})


def test_factory_models_train_in_pixel_space_on_converted_data(foreign):
    spec = ShadowSpec(FACTORY, "digits", 5, augment_alpha=3.0, augment_seed=2, finetune_epochs=1,
                      base_digest=foreign.digest, card=CARD)
    ds = shadow.load_data(spec)
    assert ds.shape == CARD.input_shape and ds.name == "digits"
    from_stored, from_pixels = train_shadow(spec, foreign.module, dataset=ds), train_shadow(spec, foreign.model)
    assert isinstance(from_stored, Normalized)
    assert torch.allclose(from_stored.mean.flatten(), torch.tensor(CARD.normalize[0]))
    assert _same(from_stored, from_pixels)  # the normalisation is applied once, whichever form the base has
    assert models.accuracy(from_stored, ds.test) > 0.8  # eq. 1 noise then the fine-tune, on the real weights
    assert models.digest(unwrap(from_stored)) != foreign.digest
    with pytest.raises(ValueError, match="load_data"):
        train_shadow(spec, foreign.model, dataset=data.load("digits"))  # 1x8x8 digits, not converted


ORPHAN_DRIVER = """
import sys
from nnmark.marks.ownership.shadow import ShadowSpec, build_pool
build_pool([ShadowSpec("lenet5", "digits", seed=s, epochs=5000) for s in (1, 2)], cache_dir=sys.argv[1], workers=1)
"""


WORKER_BUSY_SECONDS = 8.0
"""CPU time after which a worker has imported torch and nnmark (2-3 s) and is training its 5000 epochs."""


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), empty once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _workers_of(driver: int) -> list[int]:
    """The pool workers (spawned, not the resource tracker) whose parent is ``driver``, from /proc."""
    found = []
    for folder in Path("/proc").glob("[0-9]*"):
        fields = _stat(folder.name)
        try:
            spawned = b"spawn_main" in (folder / "cmdline").read_bytes()
        except OSError:
            continue
        if fields and int(fields[1]) == driver and spawned:
            found.append(int(folder.name))
    return found


def _cpu_seconds(pid: int) -> float:
    """Process ``pid``'s CPU time so far (user + system), 0 once it is gone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def _running(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


@contextlib.contextmanager
def _training_pool(tmp_path):
    """A driver building two 5000-epoch models on one worker, yielded with that worker's pid once it trains; on exit
    both are killed if still there, and no model was cached."""
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}
    driver = subprocess.Popen([sys.executable, "-c", ORPHAN_DRIVER, str(tmp_path / "cache")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None and not (
                workers and _cpu_seconds(workers[0]) > WORKER_BUSY_SECONDS):
            workers = workers or _workers_of(driver.pid)
            time.sleep(0.2)
        assert workers and _cpu_seconds(workers[0]) > WORKER_BUSY_SECONDS, "no worker got to training in 180 s"
        yield driver, workers[0]
    finally:
        driver.kill()
        driver.wait(timeout=30)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.safetensors"))


def _gone_soon(pid: int) -> bool:
    """Whether process ``pid`` ends within 15 s (at once, but on a loaded machine)."""
    deadline = time.monotonic() + 15
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _running(pid)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process table from /proc")
def test_a_worker_stops_training_once_its_driver_is_killed_outright(tmp_path):
    """SIGKILL (or a timeout's SIGTERM) runs no cleanup in the driver; its worker must not train on for nobody."""
    with _training_pool(tmp_path) as (driver, worker):
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        assert _gone_soon(worker), "the orphaned worker still trains"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process table from /proc")
def test_an_interrupted_build_ends_at_once_with_its_workers(tmp_path):
    """Ctrl-C in the driver alone (a worker in another process group, or the signal sent to one pid): the build
    stops now, not after its running and queued models are trained."""
    with _training_pool(tmp_path) as (driver, worker):
        driver.send_signal(signal.SIGINT)
        try:
            driver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the interrupted driver waits for its pool's models")
        assert driver.returncode == -signal.SIGINT  # an uncaught KeyboardInterrupt, raised through build_pool
        assert _gone_soon(worker), "the cancelled worker still trains"


def test_factory_pool_builds_in_worker_processes_and_caches_weights_the_factory_loads(foreign, tmp_path):
    specs = pool_specs_for(foreign, "digits", PoolLayout(negatives=1, val_negatives=1, af=1, epochs=1,
                                                         finetune_epochs=1))
    wanted = [specs["positives_train"][0], specs["negatives_train"][0]]  # the source augmented; a fresh factory
    pool = build_pool(wanted, cache_dir=tmp_path, base=foreign.model, workers=2, executor="process")
    assert set(pool.trained) == set(wanted)
    ds = shadow.load_data(wanted[0])
    for spec, model, path in zip(wanted, pool.models, pool.paths):
        assert _same(model, train_shadow(spec, foreign.module, dataset=ds) if spec.base_digest
                     else train_shadow(spec, dataset=ds))  # a spawned worker imports the factory and builds the same
        assert isinstance(model, Normalized) and models.accuracy(model, ds.test) > 0.5
        cached = load_any(FACTORY, weights=path)  # the card comes from the file: input shape and normalisation
        assert cached.card == CARD and _same(cached.model, model)
        record = json.loads(path.with_suffix(".json").read_text())
        assert ShadowSpec(**record["spec"]) == spec
    assert build_pool(wanted, cache_dir=tmp_path, base=foreign.module, executor="serial").trained == []


def test_pool_specs_for_a_loaded_model(foreign, lenet_digits):
    layout = PoolLayout(negatives=2, val_negatives=1, af=3)
    specs = pool_specs_for(foreign, "mnist5k", layout, seed=4)
    everything = [s for group in specs.values() for s in group]
    assert all(s.arch == FACTORY and s.card == CARD and s.data == "mnist5k" for s in everything)
    assert {s.base_digest for s in specs["positives_train"] + specs["positives_val"]} == {foreign.digest}
    assert specs == pool_specs(FACTORY, "mnist5k", foreign.digest, layout, seed=4, card=CARD)
    model, path = lenet_digits  # a zoo checkpoint on its own data keeps the plain specs (and their cache)
    checkpoint = load_any(str(path))
    assert pool_specs_for(checkpoint, "digits", layout) == pool_specs("lenet5", "digits", checkpoint.digest, layout,
                                                                      seed=3)
    normalised = load_any(str(path), normalize="0.5,0.25")
    assert {s.card for g in pool_specs_for(normalised, "digits").values() for s in g} == {normalised.card}
    assert {s.card.input_shape for g in pool_specs_for(checkpoint, "mnist5k").values() for s in g} == {(1, 8, 8)}


def test_pool_specs_for_refuses_a_model_it_cannot_rebuild(foreign, tmp_path):
    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(foreign.module), path)
    scripted = load_any(str(path), input_shape=CARD.input_shape)
    with pytest.raises(ModelError, match="torchscript") as e:
        pool_specs_for(scripted, "digits")
    assert "\n" not in str(e.value)


def test_a_factory_the_worker_cannot_import_is_one_line(tmp_path):
    spec = ShadowSpec("no_such_module_for_nnmark:net", "digits", 1, epochs=1, card=CARD)
    with pytest.raises(ModelError, match="no_such_module_for_nnmark") as e:
        build_pool([spec], cache_dir=tmp_path, executor="serial")
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_ray_ships_local_factory_modules_but_not_installed_ones():
    local = ShadowSpec(FACTORY, "digits", 0, card=CARD)
    installed = ShadowSpec("torch.nn:Identity", "digits", 0, card=CARD)  # torch lives in site-packages
    zoo = ShadowSpec("lenet5", "digits", 0)
    assert shadow.shipped_modules([local, installed, local, zoo]) == [foreign_models.__file__]
    assert shadow.shipped_modules([installed]) == []
    with pytest.raises(ModelError, match="no_such_module_for_nnmark"):
        shadow.shipped_modules([ShadowSpec("no_such_module_for_nnmark:net", "digits", 0, card=CARD)])


# --- variants: the thief's attacks in the pools ----------------------------------------------------------------

PAPER_NAMES = {
    "positives_train": ["lenet5-6b57d268163032c8.safetensors"],
    "negatives_train": ["lenet5-ac16127d8b60af57.safetensors", "lenet5-6fa032f3341e584b.safetensors",
                        "lenet5-7396cb846f262e6e.safetensors", "lenet5-8e7253415e3b44a5.safetensors",
                        "lenet5-cd54cb45a383934e.safetensors", "lenet5-6c44fd0305dd708a.safetensors"],
    "positives_val": ["lenet5-cc96f9f648568d5b.safetensors"],
    "negatives_val": ["lenet5-0ff78750fc1f31b8.safetensors"],
}
"""The cache names of a small paper pool, as the release before variants laid it out."""


def _names(specs: dict[str, list[ShadowSpec]]) -> dict[str, list[str]]:
    return {group: [s.cache_name() for s in v] for group, v in specs.items()}


def test_the_paper_pool_is_unchanged_and_the_thief_pool_adds_variants_after_it():
    paper = PoolLayout(negatives=2, val_negatives=1, af=2)
    assert _names(pool_specs("lenet5", "digits", "a" * 64, paper)) == PAPER_NAMES
    negative_variants = ("distill", "extract")
    layout = dataclasses.replace(paper, positive_variants=("rtal", "distill"), negative_variants=negative_variants)
    thief = pool_specs("lenet5", "digits", "a" * 64, layout, seed=5)
    plain = pool_specs("lenet5", "digits", "a" * 64, paper, seed=5)
    for group, specs in thief.items():
        assert specs[: len(plain[group])] == plain[group]  # the paper's pools first, as they were
    added = {group: thief[group][len(plain[group]):] for group in thief}
    positives = added["positives_train"] + added["positives_val"]
    assert sorted(s.variant for s in positives) == ["distill", "distill", "rtal", "rtal"]  # two copies of each
    assert [s.variant for s in added["positives_val"]] == ["rtal", "distill"]  # one of each validates
    assert all(s.base_digest == "a" * 64 and s.augment_alpha is None for s in positives)
    negatives = added["negatives_train"]
    assert [(s.seed, s.variant) for s in negatives] == [(6, v) for v in negative_variants] + [
        (7, v) for v in negative_variants]  # one of each per train family, attacking its model
    assert all(s.base_digest is None and s.base() in thief["negatives_train"] for s in negatives)
    val_teachers = {s.seed for s in added["negatives_val"]}
    assert [s.variant for s in added["negatives_val"]] == list(negative_variants) and len(val_teachers) == 2
    assert val_teachers.isdisjoint({s.seed for s in thief["negatives_val"] if not s.augmented} | {5, 6, 7})
    everything = [s for group in thief.values() for s in group]
    assert len({s.cache_name() for s in everything}) == len(everything)
    for seed in (0, 5):  # no student starts from the initial weights of the source or a from-scratch model
        specs = [s for group in pool_specs("lenet5", "digits", "a" * 64, layout, seed=seed).values() for s in group]
        scratch = {seed} | {s.seed for s in specs if s.base_digest is None}
        assert scratch.isdisjoint(s.augment_seed for s in specs if s.variant)
    one = pool_specs("lenet5", "digits", "a" * 64, dataclasses.replace(paper, positive_variants=("rtal",),
                                                                         variant_copies=1), seed=5)
    assert [s.variant for s in one["positives_train"]] == [None, "rtal"]
    assert one["positives_val"] == plain["positives_val"] != []  # a single copy only trains


def test_the_thief_aware_pools_add_one_training_copy_of_each_attack_and_student_of_the_source():
    paper = PoolLayout(negatives=2, val_negatives=1, af=2)
    assert paper.thief_aware() == dataclasses.replace(paper, positive_variants=shadow.THIEF_POSITIVES,
                                                      negative_variants=(), variant_copies=1)
    assert shadow.THIEF_POSITIVES == ("rtal", "prune", "noise", "distill", "extract")  # the pool study's choice
    thief = pool_specs("lenet5", "digits", "a" * 64, paper.thief_aware(), seed=5)
    plain = pool_specs("lenet5", "digits", "a" * 64, paper, seed=5)
    added = thief["positives_train"][len(plain["positives_train"]):]
    assert [s.variant for s in added] == list(shadow.THIEF_POSITIVES)
    assert all(s.base_digest == "a" * 64 and s.augment_seed == 5 + shadow.VARIANT_SEEDS for s in added)
    assert {s.model_arch for s in added} == {"lenet5"}  # students of the same architecture
    for group in ("negatives_train", "positives_val", "negatives_val"):  # train only: the screen demands none
        assert thief[group] == plain[group]


def test_the_wide_pools_add_students_of_each_other_family_and_a_hard_prune_to_the_thief_aware_ones():
    paper = PoolLayout(negatives=2, val_negatives=1, af=2)
    for arch, others in (("lenet5", ("vgg11", "resnet20")), ("vgg11", ("lenet5", "resnet20")),
                         ("resnet50", ("lenet5", "vgg11", "resnet20"))):
        wide = paper.thief_wide(arch)
        added = [f"{kind}:{other}" for other in others for kind in ("distill", "extract")]
        assert wide == dataclasses.replace(paper.thief_aware(),
                                           positive_variants=(*shadow.THIEF_POSITIVES, *added, "prune90"))
        assert paper.design("thief-wide", arch) == wide
    assert shadow.students("vgg11") == ("distill:vgg11", "extract:vgg11")
    assert paper.design("paper", "lenet5") == paper and paper.design("thief", "lenet5") == paper.thief_aware()
    assert set(shadow.POOL_DESIGNS) == {"paper", "thief", "thief-wide"}
    with pytest.raises(ArgumentError, match="unknown pool design 'wide'; choose one of paper, thief, thief-wide"):
        paper.design("wide", "lenet5")
    specs = pool_specs("lenet5", "digits", "a" * 64, paper.thief_wide("lenet5"), seed=5)
    added = specs["positives_train"][len(pool_specs("lenet5", "digits", "a" * 64, paper.thief_aware(), seed=5)
                                         ["positives_train"]):]
    assert [s.model_arch for s in added] == ["vgg11", "vgg11", "resnet20", "resnet20", "lenet5"]
    with pytest.raises(ArgumentError, match="trains another architecture, which a model with a card cannot"):
        pool_specs("lenet5", "digits", "a" * 64, paper.thief_wide("lenet5"), seed=5, card=CARD)


def test_a_variant_spec_round_trips_and_names_its_students_architecture():
    spec = ShadowSpec("lenet5", "digits", 0, augment_seed=1, variant="distill:vgg11", base_digest="b" * 64)
    assert ShadowSpec.from_json(spec.to_json()) == spec and json.loads(spec.to_json())["variant"] == "distill:vgg11"
    assert spec.augmented and spec.student == "vgg11" and spec.model_arch == "vgg11"
    assert spec.cache_name().startswith("vgg11-") and spec.base() == ShadowSpec("lenet5", "digits", 0)
    same = dataclasses.replace(spec, variant="distill")
    assert same.model_arch == "lenet5" and same.cache_name() != spec.cache_name()
    assert "variant" not in json.loads(ShadowSpec("lenet5", "digits", 0).to_json())


@pytest.mark.parametrize("kwargs", [
    {"variant": "bogus", "augment_seed": 0},
    {"variant": "rtal:vgg11", "augment_seed": 0},
    {"variant": "distill:nope", "augment_seed": 0},
    {"variant": "rtal"},
    {"variant": "rtal", "augment_seed": 0, "augment_alpha": 2.0},
    {"variant": "distill:lenet5", "augment_seed": 0, "arch": FACTORY, "card": CARD},
])
def test_a_variant_spec_refuses_bad_fields(kwargs):
    with pytest.raises(ValueError):
        ShadowSpec(**{"arch": "lenet5", "data": "digits", "seed": 0, **kwargs})


@pytest.mark.parametrize("names", [("nope",), "rtal"])
def test_a_layout_refuses_unknown_variants(names):
    with pytest.raises(ValueError):
        PoolLayout(positive_variants=names)


def test_each_variant_is_its_attack_on_the_owners_data(base_model, digits):
    digest = models.digest(base_model)

    def variant(name, **kw):
        spec = ShadowSpec("lenet5", "digits", 0, augment_seed=3, variant=name, base_digest=digest, **kw)
        return train_shadow(spec, base_model)

    base_acc = models.accuracy(base_model, digits.test)
    pruned = variant("prune", finetune_epochs=1)
    for layer in (m for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))):
        assert (layer.weight == 0).float().mean() >= shadow.VARIANT_PRUNE - 0.01
    hard = variant("prune90", finetune_epochs=1)
    layers = [m for m in hard.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    sparsity = [(m.weight == 0).float().mean() for m in layers]
    assert min(sparsity) >= shadow.VARIANT_HARD_PRUNE - 0.01 and max(sparsity) < shadow.VARIANT_HARD_PRUNE + 0.05
    assert models.accuracy(hard, digits.test) > 0.3  # 90% of the weights gone: one epoch brings back part (chance 0.1)
    rtal = variant("rtal", finetune_epochs=1)
    student = variant("distill:vgg11", epochs=3)
    assert type(student).__name__ == type(models.build("vgg11", digits.shape, 10)).__name__
    extracted = variant("extract", epochs=3)
    assert models.digest(extracted) != models.digest(variant("distill", epochs=3))
    for model in (pruned, rtal, student, extracted):
        assert models.digest(model) != digest and models.accuracy(model, digits.test) > base_acc - 0.25


def test_the_adversarial_variant_is_pgd_training_of_the_source_at_the_variants_own_radius(base_model, digits):
    digest = models.digest(base_model)
    spec = ShadowSpec("lenet5", "digits", 0, augment_seed=3, variant="adversarial", base_digest=digest,
                      finetune_epochs=2)
    robust = train_shadow(spec, base_model)
    eps = shadow.VARIANT_PGD_EPS
    direct, _ = adversarial_train(base_model, digits.train.x, digits.train.y, eps=eps, step_size=eps / 4, steps=5,
                                  clean_weight=0.5, epochs=2, seed=3)
    assert _same(robust, direct)  # the thief's attack on the owner's split, at the variant's radius and seed
    pgd = {"eps": eps, "step_size": eps / 4, "steps": 5}
    assert robust_accuracy(robust, digits.test, **pgd) > robust_accuracy(base_model, digits.test, **pgd) + 0.03
    assert models.accuracy(robust, digits.test) > models.accuracy(base_model, digits.test) - 0.25


def test_a_thief_pool_builds_each_named_variant_once_and_reuses_the_cache(base_model, tmp_path, monkeypatch):
    calls = []
    for name, attack in shadow.VARIANTS.items():
        def spy(spec, base, train, attack=attack):
            calls.append((spec.variant, models.digest(unwrap(base)), spec.seed))
            return attack(spec, base, train)
        monkeypatch.setitem(shadow.VARIANTS, name, spy)
    layout = PoolLayout(negatives=1, val_negatives=1, af=0, epochs=1, finetune_epochs=1,
                        positive_variants=("rtal", "distill:vgg11"), negative_variants=("distill",))
    specs = pool_specs("lenet5", "digits", models.digest(base_model), layout)
    wanted = [s for group in specs.values() for s in group]
    pool = build_pool(wanted, cache_dir=tmp_path, base=base_model, executor="serial")
    source = models.digest(base_model)
    assert sorted((v, d == source) for v, d, _ in calls) == [
        ("distill", False), ("distill", False), ("distill:vgg11", True), ("distill:vgg11", True), ("rtal", True),
        ("rtal", True)]  # two copies of each positive from the source; one distillation per family and val teacher
    teachers = {seed for v, d, seed in calls if d != source}
    assert teachers == {1, 3}  # the train family's model, and a teacher of its own for validation
    assert {group: len(models_) for group, models_ in pool.groups(specs).items()} == {
        "positives_train": 2, "negatives_train": 2, "positives_val": 2, "negatives_val": 2}
    assert sum(type(m).__name__ != type(base_model).__name__ for m in pool.models) == 2  # the VGG-11 students
    assert {p.name for p in tmp_path.iterdir()} >= _cache_files(wanted)
    calls.clear()
    again = build_pool(wanted, cache_dir=tmp_path, base=base_model, executor="serial")
    assert calls == [] and again.trained == []
    assert all(_same(a, b) for a, b in zip(pool.models, again.models))


def test_a_pools_auto_micro_batch_is_measured_as_the_pools_train(monkeypatch):
    """``pool_micro_batch``: "auto" is None where every pool batch fits whole (the cache names stay), else the images
    that fit, measured in training mode (dropout keeps its mask there) whatever the model's own mode, which stays."""
    from nnmark.models import training

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    assert shadow.pool_micro_batch("auto", model, x) is None and not model.training
    assert shadow.pool_micro_batch(7, model, x) == 7 and shadow.pool_micro_batch(None, model, x) is None
    per_image = training.saved_bytes_per_image(model.train(), torch.as_tensor(x))
    model.eval()
    assert per_image > training.saved_bytes_per_image(model, torch.as_tensor(x))  # eval mode saves less
    monkeypatch.setattr(training, "ACTIVATION_BUDGET", 3 * per_image)
    assert shadow.pool_micro_batch("auto", model, x) == 3 and not model.training
    monkeypatch.setattr(training, "ACTIVATION_BUDGET", shadow.LARGEST_BATCH * per_image)
    assert shadow.pool_micro_batch("auto", model, x) is None  # the largest pool batch just fits
