"""Function-coupled watermarks (Wen et al.): triggers, masked training, embedding and verification in miniature."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from nnmark import attacks, data, keys, models
from nnmark.data.roles import natural_pool
from nnmark.errors import DataError, InputError, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import coupled
from nnmark.marks.ownership.stats import binomial_tail
from nnmark.oracles import LabelsOracle, TorchOracle


def _black_box(model, shape):
    return LabelsOracle(TorchOracle(model, shape))


@pytest.fixture(scope="module")
def embedded(mnist):
    """A LeNet-5 watermarked with direct-fusion triggers on mnist5k (6 epochs, masked, training-time fine-tuning)."""
    torch.manual_seed(0)
    return coupled.embed(models.build("lenet5", mnist.shape, mnist.num_classes), mnist, kind="direct", epochs=6,
                         seed=0)


# --- triggers ------------------------------------------------------------------------------------------


def test_pick_classes_gives_a_target_outside_the_base_classes():
    for seed in range(20):
        i, j, t = coupled.pick_classes(10, seed)
        assert len({i, j, t}) == 3 and all(0 <= c < 10 for c in (i, j, t))
    assert coupled.pick_classes(10, 3) == coupled.pick_classes(10, 3)
    i, j, t = coupled.pick_classes(10, 0, target=coupled.pick_classes(10, 0)[0])  # given t never reused as a base
    assert len({i, j, t}) == 3
    assert coupled.pick_classes(10, 0, base=(2, 5), target=7) == (2, 5, 7)
    for bad in [(2, 0, None, None), (10, 0, (1, 1), None), (10, 0, (0, 1), 1), (10, 0, None, 10)]:
        with pytest.raises(ValueError):
            coupled.pick_classes(*bad)


def test_direct_fusion_puts_i_top_left_j_bottom_right_and_white_elsewhere(mnist):
    x_i, x_j = mnist.train.x[:4], mnist.train.x[4:8]
    wm = coupled.direct_fusion(x_i, x_j)
    assert wm.shape == x_i.shape and wm.dtype == torch.float32
    assert wm.min() >= 0 and wm.max() <= 1
    assert torch.allclose(wm[:, :, :14, :14], F.avg_pool2d(x_i, 2))
    assert torch.allclose(wm[:, :, 14:, 14:], F.avg_pool2d(x_j, 2))
    assert (wm[:, :, :14, 14:] == 1).all() and (wm[:, :, 14:, :14] == 1).all()


def test_invisible_fusion_mixes_with_the_exact_ratio(mnist):
    x_i, x_j = mnist.train.x[:4], mnist.train.x[4:8]
    for r in coupled.PAPER_RATIOS:
        wm = coupled.invisible_fusion(x_i, x_j, r)
        assert torch.equal(wm, r * x_i + (1 - r) * x_j)
        assert wm.shape == x_i.shape and wm.min() >= 0 and wm.max() <= 1
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            coupled.invisible_fusion(x_i, x_j, bad)


def test_make_triggers_fuses_distinct_pairs_of_the_base_classes_and_is_seeded(mnist):
    pool = natural_pool(mnist)
    wm = coupled.make_triggers(pool, (3, 5), 90, kind="direct", r=0.5, generator=torch.Generator().manual_seed(1))
    again = coupled.make_triggers(pool, (3, 5), 90, kind="direct", r=0.5, generator=torch.Generator().manual_seed(1))
    assert wm.shape == (90, 1, 28, 28) and torch.equal(wm, again)
    assert len(torch.unique(wm.flatten(1), dim=0)) == 90
    tops = {tuple(x.flatten().tolist()) for x in F.avg_pool2d(pool.x[pool.y == 3], 2)}
    assert all(tuple(w[:, :14, :14].flatten().tolist()) in tops for w in wm)
    p, q = coupled.base_pairs(4, 5, 20, torch.Generator().manual_seed(0))
    assert len(set(zip(p.tolist(), q.tolist()))) == 20
    with pytest.raises(DataError):
        coupled.base_pairs(4, 5, 21, torch.Generator())
    with pytest.raises(ValueError):
        coupled.make_triggers(pool, (3, 5), 4, kind="blend", r=0.5, generator=torch.Generator())


# --- masked training -----------------------------------------------------------------------------------


def test_masks_keep_the_requested_ratio_of_every_conv_and_linear_weight():
    model = models.build("lenet5", (1, 28, 28), 10)
    masks = coupled.draw_masks(model, 0.7, torch.Generator().manual_seed(0))
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(masks) == len(layers) == 5 and all(name.endswith("weight") for name in masks)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert m.dtype == torch.bool and m.shape == params[name].shape
        assert int(m.sum()) == round(0.7 * m.numel())
    with pytest.raises(ValueError):
        coupled.draw_masks(model, 0.0, torch.Generator())


def test_masked_forward_scales_kept_weights_by_one_over_keep_ratio_and_inference_uses_full_w(mnist):
    torch.manual_seed(0)
    model = models.build("lenet5", mnist.shape, mnist.num_classes).eval()
    x = mnist.train.x[:8]
    masks = coupled.draw_masks(model, 0.6, torch.Generator().manual_seed(0))
    manual = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in manual.named_parameters():
            if name in masks:
                p.mul_(masks[name]).div_(0.6)
    with torch.no_grad():
        masked = coupled.masked_forward(model, masks, 0.6, x)
        assert torch.allclose(masked, manual(x), atol=1e-6)
        assert not torch.allclose(masked, model(x), atol=1e-3)
        full = {name: torch.ones_like(m) for name, m in masks.items()}
        assert torch.allclose(coupled.masked_forward(model, full, 1.0, x), model(x), atol=1e-6)


def test_masked_step_moves_only_the_kept_weights_even_with_adam_momentum(mnist):
    torch.manual_seed(0)
    model = models.build("lenet5", mnist.shape, mnist.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = mnist.train.x[:32], mnist.train.y[:32]
    gen = torch.Generator().manual_seed(0)
    step = dict(batch_size=len(x), generator=gen)  # one batch: one masked step
    coupled.masked_epoch(model, coupled.draw_masks(model, 0.5, gen), 0.5, opt, x, y, **step)  # momentum everywhere
    masks = coupled.draw_masks(model, 0.5, gen)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    coupled.masked_epoch(model, masks, 0.5, opt, x, y, **step)
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(p[~masks[name]], before[name][~masks[name]])
            assert (p[masks[name]] != before[name][masks[name]]).float().mean() > 0.5
    assert not torch.equal(model.features[0].bias, before["features.0.bias"])


def test_reestimate_bn_sets_running_statistics_of_the_full_weights_in_place():
    torch.manual_seed(0)
    model = models.build("resnet20", (1, 28, 28), 10, width=0.25)
    x = torch.rand(64, 1, 28, 28)
    bn = model.features[1]
    bn.momentum = 0.3
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
    coupled.reestimate_bn(model, x, batch_size=16)
    with torch.no_grad():
        stem = F.conv2d(x, model.features[0].weight, padding=1)
    assert torch.allclose(bn.running_mean, stem.mean(dim=(0, 2, 3)), atol=1e-5)  # the average of four batch means
    batch_vars = torch.stack([b.transpose(0, 1).flatten(1).var(dim=1) for b in stem.split(16)])
    assert torch.allclose(bn.running_var, batch_vars.mean(0), rtol=1e-4)
    assert bn.momentum == 0.3 and not model.training
    lenet = models.build("lenet5", (1, 28, 28), 10)
    before = models.digest(lenet)
    coupled.reestimate_bn(lenet, x)
    assert models.digest(lenet) == before


def test_masked_embedding_of_a_batchnorm_model_keeps_its_clean_accuracy():
    """Without re-estimating BatchNorm with the full W this model reaches 68%, unmasked 95%, re-estimated 88%."""
    digits = data.load("digits")
    torch.manual_seed(0)
    model = models.build("resnet20", digits.shape, digits.num_classes, width=0.5)
    wm_model, key = coupled.embed(model, digits, kind="direct", epochs=3, seed=0)
    assert key.config["clean_accuracy"] >= 0.8 and key.config["success"] >= 0.8
    assert not wm_model.training


# --- embedding and verification ------------------------------------------------------------------------


def test_embedded_watermark_is_found_with_clean_accuracy_close_to_an_unwatermarked_model(embedded, mnist, lenet,
                                                                                           tmp_path):
    wm_model, key = embedded
    i, j = key.config["base"]
    t = key.config["target"]
    assert t not in (i, j) and (key.expected == t).all() and key.queries.shape == (90, 1, 28, 28)
    assert key.config["k_wm"] < 0.01 * len(mnist.train)
    verdict = coupled.verify(_black_box(wm_model, mnist.shape), key)
    assert verdict.passed and verdict.decision == "watermarked"
    assert verdict.statistic >= 0.8 and verdict.details["p_value"] < 1e-3
    assert verdict.queries == 90 + len(key.extras["plain"]) + len(key.extras["clean"])
    assert verdict.details["rate_plain"] < 0.1
    assert models.accuracy(wm_model, mnist.test) >= models.accuracy(lenet, mnist.test) - 0.02
    path = tmp_path / "coupled.key"
    keys.save(key, path, secret=b"owner")
    assert coupled.verify(_black_box(wm_model, mnist.shape), keys.load(path, secret=b"owner")).passed


def test_an_independently_trained_clean_model_shows_no_watermark(embedded, mnist, lenet):
    _, key = embedded
    verdict = coupled.verify(_black_box(lenet, mnist.shape), key)
    assert not verdict.passed and verdict.decision == "not watermarked"
    assert verdict.statistic < 0.5 and verdict.details["p_value"] > 0.01


def test_a_model_answering_the_target_everywhere_is_not_judged_watermarked(embedded, mnist, constant_model):
    _, key = embedded
    t = key.config["target"]
    verdict = coupled.verify(_black_box(constant_model(t), mnist.shape), key)
    assert verdict.statistic == 1.0
    assert binomial_tail(90, 90, verdict.details["chance"]) < 1e-3  # against chance alone it would pass
    assert verdict.details["rate_plain"] == 1.0 and verdict.details["null"] == 1.0
    assert not verdict.passed and verdict.details["p_value"] == 1.0


def test_the_watermark_survives_pruning_half_the_weights(embedded, mnist):
    wm_model, key = embedded
    verdict = coupled.verify(_black_box(attacks.prune(wm_model, 0.5), mnist.shape), key)
    assert verdict.passed and verdict.statistic >= 0.8


def test_embedding_is_deterministic_by_seed_and_leaves_the_input_model_untouched():
    digits = data.load("digits")
    model = models.build("lenet5", digits.shape, digits.num_classes)
    before = models.digest(model)
    a_model, a = coupled.embed(model, digits, kind="invisible", r=0.7, epochs=1, seed=3)
    b_model, b = coupled.embed(model, digits, kind="invisible", r=0.7, epochs=1, seed=3)
    assert models.digest(model) == before
    assert models.digest(a_model) == models.digest(b_model) == a.model_digest
    assert torch.equal(a.queries, b.queries) and a.config == b.config
    assert a.config["kind"] == "invisible" and a.config["r"] == 0.7 and a.config["k_wm"] == 12
    assert not any(parametrize.is_parametrized(m) for m in a_model.modules())  # inference: the plain, full W


def test_bad_arguments_and_inputs_raise_clear_errors(embedded, mnist):
    wm_model, key = embedded
    model = models.build("lenet5", mnist.shape, mnist.num_classes)
    with pytest.raises(ValueError):
        coupled.embed(model, mnist, kind="blend", epochs=1)
    with pytest.raises(ValueError):
        coupled.embed(model, mnist, kind="invisible", r=1.0, epochs=1)
    with pytest.raises(ValueError, match="r must lie"):  # unused by direct fusion, still a mistake
        coupled.embed(model, mnist, kind="direct", r=1.5, epochs=1)
    with pytest.raises(ValueError):
        coupled.embed(model, mnist, keep_ratio=1.5, epochs=1)
    with pytest.raises(ValueError):
        coupled.embed(model, mnist, base=(1, 2), target=2, epochs=1)
    with pytest.raises(ValueError):
        coupled.embed(model, mnist, wm_repeat=0, epochs=1)
    oracle = _black_box(wm_model, mnist.shape)
    with pytest.raises(InputError):
        coupled.verify(oracle, key, clean_x=torch.full((4, 1, 28, 28), float("nan")))
    with pytest.raises(InputError):
        coupled.verify(oracle, key, clean_x=torch.zeros(4, 1, 8, 8))
    other = KeyFile(method="natural", config={}, queries=key.queries, expected=key.expected)
    with pytest.raises(KeyFileError):
        coupled.verify(oracle, other)
    no_extras = KeyFile(method="coupled", config={}, queries=key.queries, expected=key.expected)
    with pytest.raises(KeyFileError):
        coupled.verify(oracle, no_extras)
