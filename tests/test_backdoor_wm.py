"""Backdoor-watermark baselines (Zhang et al. content/noise/unrelated, Adi et al. abstract) in miniature."""

import pytest
import torch
import torch.nn.functional as F

from nnmark import data, keys, models
from nnmark.data.roles import natural_pool
from nnmark.errors import DataError, InputError, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import backdoor_wm as bw
from nnmark.marks.ownership import coupled
from nnmark.oracles import LabelsOracle, TorchOracle


def _black_box(model, shape):
    return LabelsOracle(TorchOracle(model, shape))


@pytest.fixture(scope="module")
def zhang_content(mnist):
    torch.manual_seed(0)
    return bw.embed(models.build("lenet5", mnist.shape, mnist.num_classes), mnist, kind="content", epochs=3, seed=0)


@pytest.fixture(scope="module")
def adi_pretrained(mnist, lenet):
    return bw.embed(lenet, mnist, kind="abstract", epochs=3, lr=2e-3, seed=0, pretrained=True)


# --- triggers ------------------------------------------------------------------------------------------


def test_content_trigger_stamps_the_word_white_in_the_bottom_left_and_leaves_the_rest(mnist):
    x = mnist.train.x[:6]
    stamped = bw.make_triggers("content", 6, shape=mnist.shape, generator=torch.Generator().manual_seed(0),
                               source_x=x)
    assert stamped.shape == x.shape and stamped.dtype == torch.float32 and 0 <= stamped.min() <= stamped.max() <= 1
    word = bw.word_bitmap().bool()
    assert word.shape == (5, 15) and int(word.sum()) == 7 + 11 + 11 + 7  # T E S T
    assert not word[:, 3].any() and not word[:, 7].any() and not word[:, 11].any()  # blank columns
    direct = bw.stamp(x)
    region = direct[:, 0, 22:27, 1:16]
    assert (region[:, word] == 1).all()
    outside = torch.ones(28, 28, dtype=torch.bool)
    outside[22:27, 1:16] = False
    assert torch.equal(direct[:, 0][:, outside], x[:, 0][:, outside])
    assert torch.equal(direct[:, 0, 22:27, 1:16][:, ~word], x[:, 0, 22:27, 1:16][:, ~word])
    assert {tuple(s.flatten().tolist()) for s in stamped} <= {tuple(s.flatten().tolist()) for s in direct}
    small = bw.stamp(torch.zeros(2, 3, 8, 8))
    assert small.shape == (2, 3, 8, 8) and small.sum() > 0 and small[:, :, :4].sum() == 0


def test_noise_trigger_is_clipped_seeded_gaussian_noise_on_source_images(mnist):
    src = mnist.train.x[mnist.train.y == 3][:40]
    a = bw.make_triggers("noise", 20, shape=mnist.shape, generator=torch.Generator().manual_seed(1), source_x=src)
    b = bw.make_triggers("noise", 20, shape=mnist.shape, generator=torch.Generator().manual_seed(1), source_x=src)
    assert torch.equal(a, b) and a.shape == (20, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
    noise = bw.gaussian_noise(torch.full((200, 1, 28, 28), 0.5), 0.1, torch.Generator().manual_seed(0)) - 0.5
    assert abs(noise.std().item() - 0.1) < 0.005 and abs(noise.mean().item()) < 0.005
    with pytest.raises(DataError):
        bw.make_triggers("noise", 41, shape=mnist.shape, generator=torch.Generator(), source_x=src)
    with pytest.raises(DataError):
        bw.make_triggers("content", 2, shape=mnist.shape, generator=torch.Generator())
    with pytest.raises(ValueError):
        bw.gaussian_noise(src, 0.0, torch.Generator())


def test_unrelated_triggers_are_photo_patches_with_disjoint_train_and_verify_regions():
    gen = torch.Generator().manual_seed(0)
    gray = bw.make_triggers("unrelated", 16, shape=(1, 28, 28), generator=gen)
    rgb = bw.make_triggers("unrelated", 4, shape=(3, 32, 32), generator=gen, part="verify")
    assert gray.shape == (16, 1, 28, 28) and rgb.shape == (4, 3, 32, 32)
    assert 0 <= gray.min() and gray.max() <= 1 and gray.std() > 0.05
    assert len(torch.unique(gray.flatten(1), dim=0)) == 16
    photos = bw._photos()
    split = round(bw.TRAIN_REGION * photos.shape[-1])
    for part, (lo, hi) in (("train", (0, split)), ("verify", (split, photos.shape[-1]))):
        g = torch.Generator().manual_seed(3)
        patches = bw.photo_patches(5, (3, 28, 28), part=part, generator=g)
        g = torch.Generator().manual_seed(3)  # replay the draws: photo, top row, left column
        which = torch.randint(len(photos), (5,), generator=g)
        y0 = torch.randint(photos.shape[2] - bw.PATCH + 1, (5,), generator=g)
        x0 = lo + torch.randint(hi - lo - bw.PATCH + 1, (5,), generator=g)
        assert (x0 >= lo).all() and (x0 + bw.PATCH <= hi).all()
        for n in range(5):
            crop = photos[which[n], :, y0[n]: y0[n] + bw.PATCH, x0[n]: x0[n] + bw.PATCH]
            assert torch.allclose(patches[n], F.interpolate(crop[None], size=(28, 28), mode="area")[0], atol=1e-6)
    with pytest.raises(ValueError):
        bw.photo_patches(2, (1, 28, 28), part="test", generator=gen)


def test_abstract_images_are_seeded_varied_and_in_range():
    a = bw.make_triggers("abstract", 50, shape=(3, 28, 28), generator=torch.Generator().manual_seed(5))
    b = bw.make_triggers("abstract", 50, shape=(3, 28, 28), generator=torch.Generator().manual_seed(5))
    c = bw.make_triggers("abstract", 50, shape=(3, 28, 28), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (50, 3, 28, 28) and a.min() >= 0 and a.max() <= 1
    assert len(torch.unique(a.flatten(1), dim=0)) == 50
    distinct_colours = torch.tensor([torch.unique(img.flatten(1), dim=1).shape[1] for img in a])
    assert (distinct_colours >= 3).float().mean() > 0.9  # background plus several shapes
    with pytest.raises(ValueError):
        bw.make_triggers("scribble", 2, shape=(1, 28, 28), generator=torch.Generator())
    with pytest.raises(ValueError):
        bw.make_triggers("abstract", 0, shape=(1, 28, 28), generator=torch.Generator())


def test_source_and_target_are_distinct_and_given_ones_are_kept():
    for seed in range(10):
        i, t = bw.pick_source_target(10, seed)
        assert i != t and 0 <= i < 10 and 0 <= t < 10
    assert bw.pick_source_target(10, 0, 4, 7) == (4, 7)
    i, t = bw.pick_source_target(10, 3, source=2)
    assert i == 2 and t != 2
    for bad in [(10, 0, 3, 3), (10, 0, 10, 1)]:
        with pytest.raises(ValueError):
            bw.pick_source_target(*bad)


# --- embedding and verification ------------------------------------------------------------------------


def test_zhang_content_watermark_is_found_in_the_marked_model_and_not_in_a_clean_one(zhang_content, mnist, lenet,
                                                                                      tmp_path):
    model, key = zhang_content
    i, t = key.config["source"], key.config["target"]
    assert key.method == "zhang" and i != t and (key.expected == t).all()
    pool = natural_pool(mnist)
    assert len(key.queries) == min(coupled.N_VERIFY, int((pool.y == i).sum()))
    assert key.config["k_wm"] == int(0.009 * len(mnist.train))
    found = bw.verify(_black_box(model, mnist.shape), key)
    assert found.passed and found.method == "zhang" and found.statistic >= 0.9 and found.details["p_value"] < 1e-10
    assert models.accuracy(model, mnist.test) >= models.accuracy(lenet, mnist.test) - 0.04
    clean = bw.verify(_black_box(lenet, mnist.shape), key)
    assert not clean.passed and clean.statistic < 0.2
    path = tmp_path / "zhang.key"
    keys.save(key, path, secret=b"owner")
    assert bw.verify(_black_box(model, mnist.shape), keys.load(path, secret=b"owner")).passed


def test_a_model_answering_the_target_everywhere_is_not_watermarked(zhang_content, adi_pretrained, mnist,
                                                                   constant_model):
    _, key = zhang_content
    v = bw.verify(_black_box(constant_model(key.config["target"]), mnist.shape), key)
    assert v.statistic == 1.0 and v.details["null"] == 1.0 and not v.passed
    _, adi_key = adi_pretrained
    top = int(torch.bincount(adi_key.expected).argmax())
    v = bw.verify(_black_box(constant_model(top), mnist.shape), adi_key)
    share = torch.bincount(adi_key.expected).max().item() / len(adi_key.expected)
    assert v.statistic == pytest.approx(share) and v.details["null"] == pytest.approx(max(0.1, share))
    assert v.details["rate_clean"] == 1.0 and not v.passed and v.details["p_value"] > 0.4


def test_adi_watermark_fine_tuned_into_a_pretrained_model_is_found_and_random_labels_are_kept(adi_pretrained, mnist,
                                                                                               lenet):
    model, key = adi_pretrained
    assert key.method == "adi" and key.config["pretrained"] and len(key.queries) == coupled.N_VERIFY
    assert len(torch.unique(key.expected)) >= 8  # random labels, not one target
    v = bw.verify(_black_box(model, mnist.shape), key)
    assert v.passed and v.statistic >= 0.6 and v.details["p_value"] < 1e-10  # 60 of 90 at p0 0.16
    assert not bw.verify(_black_box(lenet, mnist.shape), key).passed
    assert models.accuracy(model, mnist.test) >= models.accuracy(lenet, mnist.test) - 0.03
    assert key.config["trigger_repeat"] == 3  # 90 triggers x 3 among 4,000 images: about 2 per batch of 32


def test_adis_triggers_come_about_twice_a_batch_whatever_the_training_set():
    assert bw.adi_repeat(4000, 90, 32) == 3  # mnist5k
    assert bw.adi_repeat(30000, 90, 32) == 21  # half of Fashion-MNIST: 1,890 of 31,890 images, 1.9 a batch
    assert bw.adi_repeat(30000, 90, 64) == 10 and bw.adi_repeat(100, 90, 32) == 1
    for n, k, b in ((4000, 90, 32), (30000, 90, 32), (60000, 100, 128)):
        per_batch = k * bw.adi_repeat(n, k, b) * b / (n + k * bw.adi_repeat(n, k, b))
        assert 1.5 <= per_batch <= 2.5


def test_embedding_is_deterministic_by_seed_and_leaves_the_input_model_untouched():
    digits = data.load("digits")
    torch.manual_seed(0)
    model = models.build("lenet5", digits.shape, digits.num_classes)
    before = models.digest(model)
    for kind in ("noise", "unrelated", "abstract"):
        a_model, a = bw.embed(model, digits, kind=kind, epochs=1, seed=2)
        b_model, b = bw.embed(model, digits, kind=kind, epochs=1, seed=2)
        assert models.digest(a_model) == models.digest(b_model) == a.model_digest
        assert torch.equal(a.queries, b.queries) and torch.equal(a.expected, b.expected) and a.config == b.config
        assert a.queries.shape[1:] == (1, 8, 8) and a.config["kind"] == kind
    assert models.digest(model) == before


def test_bad_arguments_and_inputs_raise_clear_errors(zhang_content, mnist):
    model, key = zhang_content
    fresh = models.build("lenet5", mnist.shape, mnist.num_classes)
    with pytest.raises(ValueError):
        bw.embed(fresh, mnist, kind="blend", epochs=1)
    with pytest.raises(ValueError):
        bw.embed(fresh, mnist, kind="content", source=3, target=3, epochs=1)
    with pytest.raises(ValueError):
        bw.embed(fresh, mnist, kind="abstract", target=3, epochs=1)
    with pytest.raises(ValueError):
        bw.embed(fresh, mnist, kind="noise", epochs=0)
    oracle = _black_box(model, mnist.shape)
    with pytest.raises(InputError):
        bw.verify(oracle, key, clean_x=torch.full((4, 1, 28, 28), float("nan")))
    with pytest.raises(KeyFileError):
        bw.verify(oracle, KeyFile(method="natural", config={}, queries=key.queries, expected=key.expected))
    with pytest.raises(KeyFileError):
        bw.verify(oracle, KeyFile(method="adi", config={}, queries=key.queries, expected=key.expected))
