import pytest
import torch

from nnmark import envs
from nnmark.errors import InputError
from nnmark.marks.telltale import innformant, minimal
from nnmark.metrics import psnr
from nnmark.oracles import TorchOracle

NAMES = ("float32", "float64", "mkldnn-off")


@pytest.fixture(scope="module")
def limit(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    x = mnist.test.x[:16]
    return oracle, x, minimal.deepfool(oracle, x), minimal.sign_minimal(oracle, x)


def test_deepfool_flips_the_label_on_the_boundary_with_less_l2_than_a_sign_step(limit):
    oracle, x, deep, sign = limit
    y0 = oracle.labels(x)
    assert deep.success.all() and sign.success.all()
    assert (oracle.labels(deep.samples) != y0).all() and (oracle.labels(sign.samples) != y0).all()
    assert deep.samples.dtype == torch.float32 and deep.samples.min() >= 0 and deep.samples.max() <= 1
    assert torch.allclose(deep.l2, (deep.samples.double() - x.double()).flatten(1).norm(dim=1))
    assert (deep.iterations >= 1).all() and (deep.iterations < 50).all()
    # bisected onto the boundary: 0.1% closer to the source, the label is still y0
    back = (x.double() + 0.999 * (deep.samples.double() - x.double())).float()
    assert (oracle.labels(back) == y0).all()
    # the same label change costs a sign step (eq. 2's direction) more L2 than DeepFool's gradient path
    assert (deep.l2 < sign.l2).all(), (deep.l2, sign.l2)
    assert psnr(deep.samples, x).median() > psnr(sign.samples, x).median() + 2


def test_bad_inputs_are_refused(limit, lenet, mnist):
    oracle, x, _, _ = limit
    with pytest.raises(InputError):
        minimal.deepfool(oracle, torch.full_like(x[:2], float("nan")))
    with pytest.raises(ValueError):
        minimal.deepfool(oracle, x, max_iter=0)
    oracles = {name: envs.get(name).oracle(lenet, mnist.shape) for name in NAMES}
    with pytest.raises(ValueError):
        minimal.refine(oracles, x[:2], x[:3])
    with pytest.raises(ValueError, match="two environments"):
        minimal.line_search({"float32": oracles["float32"]}, x, x)
    with pytest.raises(InputError):
        minimal.line_search(oracles, x * 2, x)


def test_line_search_finds_telltale_samples_at_the_limit(limit, lenet, mnist):
    oracle, x, deep, _ = limit
    oracles = {name: envs.get(name).oracle(lenet, mnist.shape) for name in NAMES}
    through = (x.double() + 2 * (deep.samples.double() - x.double())).clamp(0, 1).float()
    samples, ok = minimal.line_search(oracles, x, through)
    assert ok.sum() >= 8, ok  # ~80% here
    labels = torch.stack([o.labels(samples[ok]) for o in oracles.values()], dim=1)
    assert (innformant.singled_out(labels) >= 0).all()
    gap = psnr(deep.samples[ok], x[ok]) - psnr(samples[ok], x[ok])
    assert gap.abs().median() < 0.5, gap


def test_refine_raises_psnr_and_keeps_the_environment_it_singles_out(limit, lenet, mnist):
    oracle, x, deep, _ = limit
    oracles = {name: envs.get(name).oracle(lenet, mnist.shape) for name in NAMES}
    key = innformant.create(oracle, oracles, x, remote_max=200)
    sources, index = key.extras["sources"], key.extras["source_index"]
    assert len(index) >= 6
    own = innformant.singled_out(key.extras["env_labels"])
    refined = minimal.refine(oracles, sources, key.queries, through=deep.samples[index])
    before, after = psnr(key.queries, sources), psnr(refined, sources)
    assert (after >= before).all()
    assert (after > before + 1).sum() >= len(index) // 2, (before, after)  # most move ~2-5 dB toward the limit
    labels = torch.stack([o.labels(refined) for o in oracles.values()], dim=1)  # all at once, as a verifier
    assert torch.equal(innformant.singled_out(labels), own)
    # without a limit to aim at, bisection back along the path alone: never worse, still singling out
    back = minimal.refine(oracles, sources, key.queries)
    assert (psnr(back, sources) >= before).all()
    labels = torch.stack([o.labels(back) for o in oracles.values()], dim=1)
    assert torch.equal(innformant.singled_out(labels), own)
