"""Issue 24, items 3 and 5: micro-batches bound memory (keys equal to one-batch keys), ``nnmark bench scale``."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

import nnmark
from nnmark import models
from nnmark.cli import main
from nnmark.errors import ArgumentError
from nnmark.marks.integrity import pairing
from nnmark.marks.ownership import ipguard
from nnmark.marks.telltale import innformant, minimal
from nnmark.oracles import TorchOracle
from nnmark.suspect import ModelSource, open_suspect

SECRET = b"scale test secret"


class CountingOracle(TorchOracle):
    """A TorchOracle that counts its forward passes (one per micro-batch)."""

    passes = 0

    def _forward(self, c):
        self.passes += 1
        return super()._forward(c)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return models.build("lenet5", (1, 8, 8), 10).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def test_a_gradient_runs_in_micro_batches_each_loss_seeing_its_own_rows(net, x):
    labels = torch.arange(10) % 10
    whole = TorchOracle(net, (1, 8, 8))
    counted = CountingOracle(net, (1, 8, 8), batch_size=4)
    counted.passes = 0
    loss_fn = lambda z, y: torch.nn.functional.cross_entropy(z, y, reduction="none")  # noqa: E731
    loss, grad = counted.gradient(loss_fn, x, on="logits", per_sample=(labels,))
    assert counted.passes == 3  # 4 + 4 + 2
    ref_loss, ref_grad = whole.gradient(loss_fn, x, on="logits", per_sample=(labels,))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    with pytest.raises(ArgumentError, match="per_sample"):
        whole.gradient(loss_fn, x, on="logits", per_sample=(labels[:3],))


def test_per_sample_rows_reach_the_loss_by_micro_batch(net, x):
    seen = []
    CountingOracle(net, (1, 8, 8), batch_size=3).gradient(
        lambda z, i: seen.append(i.clone()) or z[:, 0], x, on="logits", per_sample=(torch.arange(10),))
    assert [s.tolist() for s in seen] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


@pytest.mark.parametrize("method, settings, exact", [
    ("dbi", {"itr": 15}, True),
    # Adam over many steps carries the last-bit differences of a micro-batch's float reductions
    ("aid", {"itr": 15}, False),
    ("ipguard", {"iterations": 300, "k": 0.01, "lr": 0.1}, False),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_key_made_in_micro_batches_equals_the_one_batch_key(net, x, method, settings, exact):
    given = {"input_shape": (1, 8, 8)} if method == "pairs" else {"x": x}
    one = nnmark.mark(method, net, **given, **settings)
    small = nnmark.mark(method, net, batch_size=3, **given, **settings)
    assert small.config["batch_size"] == 3 and "batch_size" not in one.config
    assert torch.equal(small.expected, one.expected)
    if exact:
        assert torch.equal(small.queries, one.queries)
    else:
        torch.testing.assert_close(small.queries, one.queries, rtol=0, atol=1e-4)
    assert nnmark.verify(small, net, secret=SECRET).passed  # in the key's micro-batches
    assert nnmark.verify(small, net, secret=SECRET, batch_size=len(x)).passed  # and in one batch


def test_pairs_stage_one_in_micro_batches_stays_with_the_one_batch_run(net):
    head = pairing.derive_head(SECRET, "u", 10)
    settings = {"lam": pairing.DEFAULT_LAMBDA, "lr": pairing.PAPER_LR, "max_itr": 20, "tol": 0.0, "patience": 30,
                "activation_on": pairing.DEFAULT_ACTIVATION, "seed": 0}
    whole = pairing.approach_boundary(TorchOracle(net, (1, 8, 8)), head, 10, **settings)
    split = pairing.approach_boundary(TorchOracle(net, (1, 8, 8), batch_size=4), head, 10, **settings)
    torch.testing.assert_close(split[0], whole[0], rtol=0, atol=1e-5)  # Adam: last-bit differences only
    assert split[1] == whole[1]
    torch.testing.assert_close(split[2], whole[2])


def test_innformant_and_minimal_steps_stay_with_the_one_batch_run(net, x):
    """Telltale samples live on float32 noise (a batch size is one of their environments): the micro-batched run
    stays within float32 rounding of the one-batch run, every sample given its own y0 (a wrong row would send it
    elsewhere by whole steps)."""
    close = {"rtol": 0, "atol": 1e-5}
    a = innformant.local_phase(TorchOracle(net, (1, 8, 8)), x, local_max=20)
    b = innformant.local_phase(TorchOracle(net, (1, 8, 8), batch_size=3), x, local_max=20)
    torch.testing.assert_close(b.samples, a.samples, **close)
    assert torch.equal(a.steps, b.steps)
    c = minimal.deepfool(TorchOracle(net, (1, 8, 8)), x, max_iter=5)
    d = minimal.deepfool(TorchOracle(net, (1, 8, 8), batch_size=4), x, max_iter=5)
    torch.testing.assert_close(d.samples, c.samples, **close)
    e = minimal.sign_minimal(TorchOracle(net, (1, 8, 8), batch_size=4), x)
    torch.testing.assert_close(e.samples, minimal.sign_minimal(TorchOracle(net, (1, 8, 8)), x).samples, **close)


def test_ipguard_points_move_alike_in_micro_batches(net, x):
    i, j = ipguard.draw_pairs(len(x), 10, torch.Generator().manual_seed(0))
    whole = ipguard.find_boundary_points(TorchOracle(net, (1, 8, 8)), x, i, j, iterations=40, k=0.01, lr=0.1)
    split = ipguard.find_boundary_points(TorchOracle(net, (1, 8, 8), batch_size=4), x, i, j, iterations=40, k=0.01,
                                         lr=0.1)
    torch.testing.assert_close(split[0], whole[0], rtol=0, atol=1e-4)  # Adam: last-bit differences only
    assert torch.equal(whole[1], split[1])


def test_pairs_stage_two_gives_each_sample_its_own_label_in_micro_batches(net, x):
    head = pairing.derive_head(SECRET, "u", 10)
    whole = pairing.cross_boundary(TorchOracle(net, (1, 8, 8)), head, x, alpha=1e-3, max_steps=50)
    split = pairing.cross_boundary(TorchOracle(net, (1, 8, 8), batch_size=4), head, x, alpha=1e-3, max_steps=50)
    for a, b in zip(whole, split):
        assert torch.equal(a, b)


def test_verify_asks_a_local_model_in_the_keys_micro_batches(tmp_path, net):
    path = tmp_path / "m.safetensors"
    models.save(net, models.ModelConfig("lenet5", (1, 8, 8), 10), path)
    with open_suspect(ModelSource(str(path)), batch_size=5) as (oracle, _):
        assert oracle.batch_size == 5
    with open_suspect(ModelSource(str(path)), env="batch1", batch_size=5) as (oracle, _):
        assert oracle.batch_size == 1  # the environment's own micro-batch is what it tests


def test_mark_records_its_batch_size_and_verify_passes(tmp_path):
    from nnmark import keys

    torch.manual_seed(0)
    ds_model = models.build("lenet5", (1, 8, 8), 10)
    models.save(ds_model, models.ModelConfig("lenet5", (1, 8, 8), 10, data="digits"), tmp_path / "m.safetensors")
    (tmp_path / "secret").write_bytes(SECRET)
    common = ["--model", str(tmp_path / "m.safetensors"), "--secret-file", str(tmp_path / "secret")]
    r = CliRunner().invoke(main, ["mark", "dbi", *common, "--n", "9", "--itr", "5", "--batch-size", "4", "--out",
                                  str(tmp_path / "k.key")])
    assert r.exit_code == 0, r.output
    assert keys.load(tmp_path / "k.key", secret=SECRET).config["batch_size"] == 4
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "k.key"), *common])
    assert r.exit_code == 0, r.output


def test_bench_scale_quick_writes_its_table(tmp_path):
    r = CliRunner().invoke(main, ["bench", "scale", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "scale.json").read_text())
    methods = {row["method"] for row in result["rows"]}
    assert methods == {"dbi", "aid", "pairs stage 1", "pairs stage 2", "ipguard", "innformant (local)", "natural"}
    for row in result["rows"]:
        assert row["floor_s"] > 0 and math.isfinite(row["ratio"]) and row["peak_mib"] > 0
    (trained,) = result["trained"]
    assert trained["train_step_s"] > 0 and trained["meta_step_s"] > 0
    assert trained["metafinger_key_s"] > trained["pools_s"] > 0 and trained["sac_key_s"] > trained["pools_s"]
    assert [m["n"] for m in result["memory"]] == [8, 32]
    md = (tmp_path / "scale.md").read_text()
    assert md.startswith("# Cost at scale") and "no GPU was lent" in md and "SAC and MetaFinger" in md


def test_bench_scale_on_a_card_writes_its_own_table_and_the_real_key(tmp_path, monkeypatch):
    """The ``--device cuda`` path, with the few CUDA calls it makes answered here (CI has no card): one table per
    device, the card named, its allocated peak in place of the RSS, every wait synchronised, and the real DBI key
    run to its iterations or its deadline and projected from its own rate."""
    from nnmark.bench import scale

    synced = []
    monkeypatch.setattr("nnmark.envs.resolve_device", lambda d: "cuda")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: synced.append(a))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 123 * 2**20)
    setup = scale._setup
    monkeypatch.setattr(scale, "_setup", lambda m, n, b, device="cpu": setup(m, n, b, "cpu"))
    monkeypatch.setattr(scale, "_where_fields", lambda d: {"device_name": "Test Card", "torch": torch.__version__,
                                                           "cuda": "13.0", "tf32_cudnn": True, "tf32_matmul": False})
    monkeypatch.setitem(scale.QUICK_GPU, "full_key", {"model": "LeNet-5", "chunk": 2, "deadline_s": 1e-9})
    path = scale.run(quick=True, device="cuda", out_dir=tmp_path)
    assert path.name == "scale-cuda.md" and not (tmp_path / "scale.md").exists()
    result = json.loads((tmp_path / "scale-cuda.json").read_text())
    assert result["command"].endswith("--device cuda") and result["device_name"] == "Test Card"
    assert all(row["peak_mib"] == 123 for row in result["rows"]) and synced
    key = result["full_key"]
    assert key["iterations"] == 2 and not key["complete"] and key["key_s"] == pytest.approx(
        key["seconds"] * key["of"] / 2)
    md = path.read_text()
    assert "Test Card" in md and "stopped at the run's" in md and "no GPU was lent" not in md
