"""nnmark audit asks a local model (--model) in each key's micro-batches, as nnmark verify does."""

import pytest
import torch
from click.testing import CliRunner

import nnmark
from nnmark import data, keys, models
from nnmark.audit import run as audit
from nnmark.cli import main
from nnmark.oracles import TorchOracle

WHOLE = 30
"""Queries of each key: more than any micro-batch below."""


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A digits LeNet-5 on disk, and three unsigned keys of it: made in micro-batches of 4, of 7, and in one batch."""
    ds = data.load("digits")
    root = tmp_path_factory.mktemp("audit-batches")
    torch.manual_seed(0)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    models.train(model, ds.train, epochs=2, seed=0)
    path = root / "m.safetensors"
    models.save(model, models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="digits"), path)
    made = {"four": nnmark.mark("natural", model, ds.test.x[:WHOLE], batch_size=4),
            "seven": nnmark.mark("random", model, input_shape=ds.shape, n=WHOLE, batch_size=7),
            "whole": nnmark.mark("natural", model, ds.test.x[WHOLE:2 * WHOLE])}
    for name, key in made.items():
        keys.save(key, root / f"{name}.key", secret=None)
    return path, {name: root / f"{name}.key" for name in made}


@pytest.fixture
def forward_sizes(monkeypatch):
    """The size of every forward pass any ``TorchOracle`` runs meanwhile, in order."""
    seen = []
    forward = TorchOracle._forward

    def recorded(self, c):
        seen.append(len(c))
        return forward(self, c)

    monkeypatch.setattr(TorchOracle, "_forward", recorded)
    return seen


def _audit(path, key_paths, env="float32"):
    loaded = audit.load_keys(key_paths, secret=None, allow_unsigned=True)
    return audit.audit_target(audit.local_target(path, env), loaded, audit.Settings(sequential=False))


def test_each_key_is_asked_in_its_own_micro_batches(local, forward_sizes):
    path, key_paths = local
    assert keys.load(key_paths["four"], secret=None, allow_unsigned=True).config["batch_size"] == 4
    for name, size in (("four", 4), ("seven", 7), ("whole", WHOLE)):
        forward_sizes.clear()
        result = _audit(path, [key_paths[name]])
        assert result.status() == 0 and result.keys[0].decision == "intact", result.problem()
        asked = forward_sizes[1:]  # the first pass reads the model's classes when it opens
        assert max(asked) == size and sum(asked) >= WHOLE, (name, asked)


def test_keys_of_one_target_share_its_oracle_each_in_its_micro_batches(local, forward_sizes):
    path, key_paths = local
    result = _audit(path, [key_paths["four"], key_paths["whole"], key_paths["seven"]])
    assert result.status() == 0 and [r.decision for r in result.keys] == ["intact"] * 3, result.problem()
    asked = forward_sizes[1:]
    whole = asked.index(WHOLE)  # the middle key's one pass, between the first key's passes and the last key's
    assert max(asked[:whole]) == 4 and max(asked[whole + 1:]) == 7


def test_an_environment_with_its_own_batch_keeps_it(local, forward_sizes):
    path, key_paths = local
    result = _audit(path, [key_paths["seven"]], env="batch1")
    assert result.keys[0].queries == WHOLE and set(forward_sizes) == {1}


def test_audit_command_asks_a_local_model_in_the_keys_micro_batches(local, forward_sizes):
    path, key_paths = local
    r = CliRunner().invoke(main, ["audit", str(key_paths["four"]), "--model", str(path), "--unsigned",
                                  "--no-sequential", "--json"])
    assert r.exit_code == 0, r.output
    assert max(forward_sizes[1:]) == 4 and sum(forward_sizes[1:]) >= WHOLE
