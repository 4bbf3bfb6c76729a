import pytest
import torch

from nnmark import envs, models
from nnmark.errors import AccessError, InputError, KeyFileError, NnmarkError
from nnmark.keys import KeyFile
from nnmark.marks.telltale import innformant
from nnmark.oracles import LabelsOracle, ProbabilitiesOracle, TorchOracle

PAIR = ("float32", "float64")
SOURCES = 24  # starting images: a float32/float64 boundary sample is found for ~70% of them


def _oracles(model, shape, names=PAIR):
    return {name: envs.get(name).oracle(model, shape) for name in names}


@pytest.fixture(scope="module")
def key(lenet, mnist):
    """A float32-vs-float64 key from 8 test images, float32 the reference."""
    oracles = _oracles(lenet, mnist.shape)
    return innformant.create(oracles["float32"], oracles, mnist.test.x[:SOURCES], remote_max=200)


def test_delta_conf_and_the_sign_rule_step_toward_the_boundary(lenet, mnist):
    p = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    assert torch.allclose(innformant.delta_conf(p), torch.tensor([0.5, 0.1]))
    assert innformant.correctness_sign(torch.tensor([3, 1]), torch.tensor([3, 2])).tolist() == [-1.0, 1.0]
    x = mnist.test.x[:6]
    oracle = TorchOracle(lenet, mnist.shape)
    logits = oracle.logits(x)
    y0 = logits.argmax(dim=1)
    # the true label: c = -1 descends m (toward the boundary); a label the model does not give: c = +1 ascends
    for original in (y0, (y0 + 1) % 10):
        m = innformant.margin(logits, original)
        assert ((m > 0) == (original == y0)).all()
        grad, _ = innformant._margin_gradient(oracle, x, original)
        c = innformant.correctness_sign(y0, original)
        delta = innformant.delta_conf(torch.softmax(logits, dim=1))
        step = innformant.boundary_step(x, grad, c, delta, 1e-3, torch.ones(6, dtype=torch.float64))
        m_after = innformant.margin(oracle.logits(step), original)
        assert (m_after.abs() < m.abs()).all(), (m, m_after)
        assert step.min() >= 0 and step.max() <= 1
        moved = (step - x).abs().flatten(1).max(dim=1).values
        assert torch.allclose(moved.double(), delta.double() * 1e-3, rtol=1e-3)  # the step is delta_conf * alpha


def test_the_stall_rule_grows_the_step_and_resets_it(lenet, mnist):
    scale = torch.tensor([1.0, 4.0, 8.0, 2.0**31], dtype=torch.float64)
    same = torch.tensor([True, True, False, True])
    assert innformant.stall_scale(scale, same).tolist() == [2.0, 8.0, 1.0, 2.0**32]
    assert innformant.stall_scale(torch.tensor([2.0**32], dtype=torch.float64), torch.tensor([True])).item() == 2.0**32
    # a confident image keeps its label for the first steps: with the rule it moves ~2^k further than without
    x = mnist.test.x[:4]
    oracle = TorchOracle(lenet, mnist.shape)
    grown = innformant.local_phase(oracle, x, local_max=6)
    flat = innformant.local_phase(oracle, x, local_max=6, max_scale=1.0)
    dist = lambda r: (r.samples - x).abs().flatten(1).max(dim=1).values  # noqa: E731
    assert (grown.steps == 6).all() and (flat.steps == 6).all()
    assert (dist(grown) > 8 * dist(flat)).all()
    # the full local phase crosses the boundary, resets and converges: delta_conf below target
    full = innformant.local_phase(oracle, x, local_max=400)
    assert full.success.all() and (full.steps < 400).all()
    assert (innformant.delta_conf(oracle.probabilities(full.samples).double()) < 1e-5).all()


def test_boundary_samples_tell_float32_from_float64_repeatably(key, lenet, mnist):
    assert key.method == "innformant" and key.config["environments"] == list(PAIR)
    n = len(key.queries)
    assert n >= 2, f"fewer than 2 of {SOURCES} sources gave a float32/float64 boundary sample"
    labels = key.extras["env_labels"]
    assert labels.shape == (n, 2) and (labels[:, 0] != labels[:, 1]).all()
    assert torch.equal(key.expected, labels[:, 0])
    for column, name in enumerate(PAIR):
        oracle = envs.get(name).oracle(lenet, mnist.shape)
        assert torch.equal(oracle.labels(key.queries), labels[:, column]), name
        assert torch.equal(oracle.labels(key.queries), labels[:, column]), f"{name} on a repeat"
    # transparent-ish: close to their sources, the natural images keep the recorded labels
    psnr = key.extras["psnr"]
    assert (psnr > 10).all() and torch.isfinite(psnr).all()
    assert (key.extras["local_steps"] > 0).all()
    assert torch.equal(TorchOracle(lenet, mnist.shape).labels(key.extras["sources"]), key.extras["source_labels"])
    rows = innformant.report(key)
    assert len(rows) == n and all(r["singles_out"] == list(PAIR) for r in rows)  # 1 vs 1: each tells both apart
    assert rows[0]["psnr"] == pytest.approx(psnr[0].item()) and rows[0]["local_steps"] > 0


def test_identify_and_verify_name_the_environment(key, lenet, mnist):
    for name in PAIR:
        oracle = LabelsOracle(envs.get(name).oracle(lenet, mnist.shape))
        consistent, table = innformant.identify(oracle, key)
        assert consistent == [name] and table[name] == len(key.queries)
        verdict = innformant.verify(oracle, key)
        assert verdict.decision == name and verdict.passed == (name == "float32")
        assert verdict.statistic == (1.0 if name == "float32" else 0.0)
    torch.manual_seed(1)
    stranger = models.build("lenet5", mnist.shape, mnist.num_classes)
    verdict = innformant.verify(TorchOracle(stranger, mnist.shape), key)
    assert not verdict.passed and verdict.decision in (innformant.DIFFERENT_MODEL, innformant.UNKNOWN)


def test_one_vs_n_singles_out_one_environment(lenet, mnist):
    names = ("float32", "float64", "mkldnn-off")
    oracles = _oracles(lenet, mnist.shape, names)
    oracles["float64"] = ProbabilitiesOracle(oracles["float64"])  # no gradients: the local model's are used
    x = mnist.test.x[8:14]
    local = innformant.local_phase(oracles["float32"], x, local_max=300)
    remote = innformant.remote_phase(oracles["float32"], oracles, local.samples, remote_max=60)
    assert remote.success.sum() >= 3, remote.success
    # asked again in another batch, a float32 label can move (batch-dependent kernels): confirm keeps the steady ones
    kept, labels = innformant.confirm(oracles, remote.samples[remote.success])
    assert len(kept) >= 2 and labels.shape == (len(kept), 3)
    assert (innformant.singled_out(labels) >= 0).all()
    target = innformant.target_environment(torch.tensor([[1, 1, 2, 2, 2], [3, 3, 3, 3, 3]]),
                                           torch.tensor([[0.1, 0.3, 0.2, 0.5, 0.4], [0.2, 0.1, 0.3, 0.4, 0.5]]))
    assert target.tolist() == [0, 1]  # group {0, 1}: the second highest delta_conf; all alike: the smallest


def test_bad_input_and_bad_keys_are_refused(lenet, mnist, key):
    oracles = _oracles(lenet, mnist.shape)
    bad = mnist.test.x[:2].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        innformant.local_phase(oracles["float32"], bad)
    with pytest.raises(InputError):
        innformant.create(oracles["float32"], oracles, mnist.test.x[:2] * 2)
    with pytest.raises(ValueError):
        innformant.remote_phase(oracles["float32"], {"float32": oracles["float32"]}, mnist.test.x[:2])
    with pytest.raises(AccessError):
        innformant.remote_phase(oracles["float32"], {"a": LabelsOracle(oracles["float32"]), **oracles}, mnist.test.x[:2])
    with pytest.raises(AccessError):
        innformant.remote_phase(ProbabilitiesOracle(oracles["float32"]), oracles, mnist.test.x[:2])
    with pytest.raises(ValueError):
        innformant.create(oracles["float32"], oracles, mnist.test.x[:2], reference="cuda")
    with pytest.raises(NnmarkError, match="no boundary sample"):
        innformant.create(oracles["float32"], oracles, mnist.test.x[:2], local_max=0, remote_max=0)
    other = KeyFile("dbi", {}, key.queries, key.expected)
    with pytest.raises(KeyFileError):
        innformant.identify(oracles["float32"], other)
    stripped = KeyFile(key.method, key.config, key.queries, key.expected,
                       {k: v for k, v in key.extras.items() if k != "source_labels"})
    fresh = TorchOracle(lenet, mnist.shape)
    with pytest.raises(KeyFileError, match="source_labels"):
        innformant.verify(fresh, stripped)
    assert fresh.queries == 0  # refused before asking anything


def test_l2_direction_gives_more_transparent_boundary_samples(key, lenet, mnist):
    oracles = _oracles(lenet, mnist.shape)
    l2 = innformant.create(oracles["float32"], oracles, mnist.test.x[:SOURCES], remote_max=200, direction="l2")
    sign_psnr = dict(zip(key.extras["source_index"].tolist(), key.extras["psnr"].tolist()))
    gains = [p - sign_psnr[i] for i, p in zip(l2.extras["source_index"].tolist(), l2.extras["psnr"].tolist())
             if i in sign_psnr]
    # dB, same source images: better on the whole, and on most samples
    assert len(gains) >= 2 and sorted(gains)[len(gains) // 2] > 1.0 and sum(g > 0 for g in gains) >= 0.75 * len(gains), gains
    assert l2.config["direction"] == "l2" and (l2.extras["env_labels"][:, 0] != l2.extras["env_labels"][:, 1]).all()
