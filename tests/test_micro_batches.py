"""Every pass over a set of queries in micro-batches, on the model's device (``models.device_of``, ``models.outputs``),
through the attacks and marks that ask a model; an embedding method's ``batch_size`` (the micro-batch) trains
nothing, its ``train_batch_size`` does.

Micro-batched outputs are compared with one pass to within 1e-6: a float32 matrix product may block its sums by
the batch it is given, so the last bits of a logit may follow the batch size; labels and rates derived from them
are compared exactly."""

import dataclasses

import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import nnmark
from nnmark import data, keys, models
from nnmark.attacks.backdoor import target_rate
from nnmark.attacks.distill import fresh_copy, soft_labels
from nnmark.attacks.extract import extract
from nnmark.attacks.modes import output_classes
from nnmark.cli import main
from nnmark.data import Split
from nnmark.marks.ownership import backdoor_wm, coupled, sac
from nnmark.models.training import EVAL_BATCH_SIZE
from nnmark.oracles import LabelsOracle, TorchOracle
from nnmark.oracles.local import DEFAULT_BATCH_SIZE

TOLERANCE = dict(rtol=0, atol=1e-6)


def _images(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))


def _net() -> nn.Module:
    """A random net whose BatchNorm statistics are those of its images, so that it answers every class."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=None), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 6 * 6, 4))
    with torch.no_grad():
        net.train()(_images(256))
    return net.eval()


def _share(hits: torch.Tensor) -> float:
    return int(hits.sum()) / len(hits)


def _one_pass(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# --- the helpers ------------------------------------------------------------------------------------------------


def test_device_of_reads_the_first_parameter_then_buffer_and_is_the_cpu_without_either():
    assert models.device_of(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())) == torch.device("cpu")
    with torch.device("meta"):
        assert models.device_of(nn.Linear(2, 2)) == torch.device("meta")
    buffered = nn.Module()
    buffered.register_buffer("scale", torch.ones(1, device="meta"))
    assert models.device_of(buffered) == torch.device("meta")


def test_a_model_without_parameters_is_asked_where_its_device_was_looked_up():
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # four "logits", no parameter and no buffer
    x = _images(12)
    logits = _one_pass(pooled, x)
    y = torch.arange(12) % 4
    assert models.accuracy(pooled, Split(x, y)) == _share(logits.argmax(1) == y)
    assert output_classes(pooled, x) == 4
    assert target_rate(pooled, x, 2) == (logits.argmax(1) == 2).float().mean().item()
    torch.testing.assert_close(soft_labels(pooled, x, 2.0), F.log_softmax(logits / 2, dim=1), **TOLERANCE)
    torch.testing.assert_close(sac._probabilities(pooled, x, 4), logits.softmax(1), **TOLERANCE)
    assert models.device_of(fresh_copy(pooled, 0)) == torch.device("cpu")


def test_outputs_asks_in_micro_batches_restores_the_mode_and_equals_one_pass(forward_sizes):
    net, x = _net(), _images(37)
    net.train()
    got = []
    sizes = forward_sizes(net, lambda: got.append(models.outputs(net, x, 5)))
    assert sizes == [(False, 5)] * 7 + [(False, 2)] and net.training
    torch.testing.assert_close(got[0], _one_pass(net, x), **TOLERANCE)


def test_accuracy_and_soft_labels_are_the_one_pass_values_in_micro_batches_of_their_batch_size(forward_sizes):
    net, x = _net(), _images(37)
    y = torch.arange(37) % 4
    one_pass = _one_pass(net, x)
    right = []
    sizes = forward_sizes(net, lambda: right.append(models.accuracy(net, Split(x, y), batch_size=5)))
    assert right[0] == _share(one_pass.argmax(1) == y) and max(s for _, s in sizes) == 5
    soft = []
    sizes = forward_sizes(net, lambda: soft.append(soft_labels(net, x, 4.0, batch_size=6)))
    assert max(s for _, s in sizes) == 6
    torch.testing.assert_close(soft[0], F.log_softmax(one_pass / 4, dim=1), **TOLERANCE)


def test_backdoor_target_rate_asks_at_most_eval_batch_size_images_at_once(forward_sizes):
    net, x = _net(), _images(EVAL_BATCH_SIZE + 7)
    rate = []
    sizes = forward_sizes(net, lambda: rate.append(target_rate(net, x, 1)))
    assert sizes == [(False, EVAL_BATCH_SIZE), (False, 7)]
    assert rate[0] == (_one_pass(net, x).argmax(1) == 1).float().mean().item()


def test_sac_probabilities_are_asked_in_the_oracles_default_micro_batches(forward_sizes):
    net, x = _net(), _images(DEFAULT_BATCH_SIZE * 2 + 3)
    got = []
    sizes = forward_sizes(net, lambda: got.append(sac._probabilities(net, x, 4)))
    assert [s for _, s in sizes] == [DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SIZE, 3]
    torch.testing.assert_close(got[0], _one_pass(net, x).softmax(1), **TOLERANCE)


def test_extraction_asks_the_victim_in_micro_batches(forward_sizes):
    net, x = _net(), _images(DEFAULT_BATCH_SIZE * 2 + 3)
    y = torch.arange(len(x)) % 4
    net.train()
    sizes = forward_sizes(net, lambda: extract(net, x, y, student_arch="lenet5", epochs=1))
    assert all(not training for training, _ in sizes) and net.training  # the victim is only asked
    assert max(s for _, s in sizes) == DEFAULT_BATCH_SIZE


# --- embedding: the micro-batch is no training setting ----------------------------------------------------------


def _digits_lenet():
    ds = data.load("digits")
    torch.manual_seed(0)
    return ds, models.build("lenet5", ds.shape, ds.num_classes)


def test_coupled_batch_size_changes_no_weight_and_train_batch_size_does(forward_sizes):
    ds, model = _digits_lenet()
    made = []
    sizes = forward_sizes(model, lambda: made.append(coupled.embed(model, ds, kind="invisible", epochs=1, seed=3,
                                                                    batch_size=4)))
    wm_model, key = made[0]
    assert max(s for training, s in sizes if not training) == 4  # the success, null rates and accuracy passes
    assert key.config["batch_size"] == 4 and key.config["train_batch_size"] == models.DEFAULT_BATCH_SIZE
    other_model, other = coupled.embed(model, ds, kind="invisible", epochs=1, seed=3, batch_size=64)
    assert models.digest(other_model) == models.digest(wm_model) == key.model_digest
    assert {k: v for k, v in other.config.items() if k != "batch_size"} == \
        {k: v for k, v in key.config.items() if k != "batch_size"}
    retrained, _ = coupled.embed(model, ds, kind="invisible", epochs=1, seed=3, batch_size=4, train_batch_size=16)
    assert models.digest(retrained) != models.digest(wm_model)


def test_zhang_and_adi_batch_size_changes_no_weight_and_train_batch_size_does(forward_sizes):
    ds, model = _digits_lenet()
    made = []
    sizes = forward_sizes(model, lambda: made.append(backdoor_wm.zhang(model, ds, kind="noise", epochs=1,
                                                                        batch_size=4)))
    wm_model, key = made[0]
    assert max(s for training, s in sizes if not training) == 4
    assert key.config["batch_size"] == 4 and key.config["train_batch_size"] == models.DEFAULT_BATCH_SIZE
    other_model, other = backdoor_wm.zhang(model, ds, kind="noise", epochs=1, batch_size=64)
    assert models.digest(other_model) == models.digest(wm_model) and other.config["success"] == key.config["success"]
    adi_small, adi_large = (backdoor_wm.adi(model, ds, epochs=1, batch_size=b)[0] for b in (4, 64))
    assert models.digest(adi_small) == models.digest(adi_large)
    retrained, _ = backdoor_wm.embed(model, ds, kind="noise", epochs=1, batch_size=4, train_batch_size=16)
    assert models.digest(retrained) != models.digest(wm_model)


def test_a_key_from_before_the_split_still_verifies_its_batch_size_only_the_micro_batch(forward_sizes):
    ds, model = _digits_lenet()
    wm_model, key = coupled.embed(model, ds, kind="invisible", epochs=1, seed=3)
    old = dataclasses.replace(key, config={**{k: v for k, v in key.config.items() if k != "train_batch_size"},
                                           "batch_size": 32})  # the training batch, as keys recorded it
    expected = coupled.verify(LabelsOracle(TorchOracle(wm_model, ds.shape)), key)
    got = nnmark.verify(old, wm_model, input_shape=ds.shape)
    assert got.passed == expected.passed and got.statistic == expected.statistic
    sizes = forward_sizes(wm_model, lambda: nnmark.verify(old, wm_model, input_shape=ds.shape))
    assert max(s for _, s in sizes) == 32


def test_mark_zhang_batch_size_is_the_keys_micro_batch_and_trains_nothing(tmp_path):
    made = {}
    for size in (4, 64):
        wm, key = tmp_path / f"wm{size}.safetensors", tmp_path / f"zhang{size}.key"
        r = CliRunner().invoke(main, ["mark", "zhang", "--arch", "lenet5", "--data", "digits", "--epochs", "3",
                                      "--kind", "unrelated", "--batch-size", str(size), "--out-model", str(wm),
                                      "--out", str(key), "--unsigned", "--json"], env={"NNMARK_SECRET": None})
        assert r.exit_code == 0, r.output
        made[size] = wm.read_bytes(), keys.load(key, secret=None, allow_unsigned=True).config
    assert made[4][0] == made[64][0]
    assert made[4][1]["batch_size"] == 4 and made[64][1]["batch_size"] == 64
    assert made[4][1]["train_batch_size"] == made[64][1]["train_batch_size"] == models.DEFAULT_BATCH_SIZE
