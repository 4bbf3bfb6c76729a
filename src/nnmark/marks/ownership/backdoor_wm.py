"""Backdoor-watermark baselines: Zhang et al. (content, noise, unrelated) and Adi et al. (abstract images).

Papers: Zhang, Gu, Jang, Wu, Stoecklin, Huang, Molloy, "Protecting intellectual property of deep neural
networks with watermarking" (AsiaCCS 2018); Adi, Baum, Cisse, Pinkas, Keshet, "Turning your weakness into
a strength: watermarking deep neural networks by backdooring" (USENIX Security 2018). The baselines that
Wen et al. ("function-coupled watermarks", Table 4) compare against; same key format and verification
as ``nnmark.marks.ownership.coupled``.
Access: the owner trains the model (white box) to embed; labels only to verify.

Triggers (``make_triggers``), all float32 (K, C, H, W) in [0, 1]:
    content: images of a source class i stamped with the word "TEST" (Zhang's example) in white, 3x5
        pixel glyphs with one blank column between letters, a 5 x 15 bitmap at 28 x 28 resized
        (nearest) in proportion to H x W, placed one pixel from the bottom-left corner;
    noise: images of class i plus Gaussian noise N(0, sigma^2), sigma = 0.5, clipped to [0, 1];
    unrelated: patches of scikit-learn's bundled sample photos (china.jpg, flower.jpg; nothing is
        downloaded): square crops of side 128 at seeded positions, area-resized to H x W, the mean over
        RGB where C = 1. Training triggers come from the left 60% of each photo, verification triggers
        from the right 40%, so the two sets never share a pixel;
    abstract (Adi): procedural "abstract images": a random background colour and 6 shapes (ellipse,
        rectangle or stripe, each with random centre, size, orientation and colour), drawn for all K
        images at once from the seeded generator.

Embedding (``embed``):
    Zhang (method "zhang", ``kind`` content | noise | unrelated): K_wm = floor(0.009 * N_train) triggers
        (under 1% of the training data, as coupled) made from training images of the source class i, all
        labelled the target t, each repeated ``coupled.WM_REPEAT`` times in the training data (the same
        weight as coupled's WM), trained in with the clean training data from the given model (Adam,
        ``nnmark.models.train``). i and t come from ``coupled.pick_classes`` (i = its first base class).
        The key holds 90 verification triggers made the same way from the natural pool (images never
        trained on; content and noise: one per natural-pool image of class i, at most 90, which is about 50
        on mnist5k); extras "plain" (natural images of class i; for unrelated triggers: the clean images)
        and "clean" (300 natural images of all classes). Verified by ``coupled.verify``'s rule.
    Adi (method "adi", ``kind`` abstract): 90 abstract images with labels drawn uniformly at random; the
        trigger set is the key (Adi verify on the images they trained). Trained in with the clean training
        data, either from scratch (a fresh model, ``lr`` 2e-3) or by fine-tuning a pretrained model (pass a
        trained model, ``pretrained=True``, and fewer epochs; the bench: 3 at ``lr`` 2e-3, cosine decay).
        Adi's reference code appends two trigger images to every batch; here the trigger set is repeated in the
        training data so that a batch holds ``ADI_PER_BATCH`` = 2 of them on average (``adi_repeat``: 3 times on
        mnist5k's 4,000 images at a batch of 32, 21 times on half of Fashion-MNIST; Adi: 100 images; here 90, the
        key size).

Verification (labels only): success s = k / n, the share of the n queries answered their expected label,
and the one-sided binomial p-value P[X >= k], X ~ B(n, p0); passed when s >= 0.5 and p < 1e-3 (coupled's
thresholds). Zhang: p0 = max(1/N_c, rate_plain, rate_clean) as in coupled (the key is checked by
``coupled.verify`` itself). Adi: the labels are random and secret, so an unwatermarked model's answers are
independent of them and it matches each query with probability at most max_c f_c, the largest share of one
class among the expected labels: p0 = max(1/N_c, max_c f_c). A model that answers one class c everywhere
matches f_c <= p0 of them; ``rate_clean`` (the share of clean images given the suspect's most frequent
answer) is reported to show such a collapse.

Example::

    wm_model, key = backdoor_wm.embed(models.build("lenet5", ds.shape, 10), ds, kind="content", epochs=8)
    verdict = backdoor_wm.verify(LabelsOracle(TorchOracle(suspect, ds.shape)), key)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnmark.data import Dataset, Split
from nnmark.data.roles import natural_pool
from nnmark.errors import ArgumentError, DataError, KeyFileError
from nnmark.keys import KeyFile, check_query_count
from nnmark.marks.ownership import coupled
from nnmark.marks.ownership.stats import watermark_verdict
from nnmark.marks.spec import MethodSpec
from nnmark.marks.verdict import Verdict
from nnmark.models import DEFAULT_LR, accuracy, device_of, digest, train
from nnmark.models.card import unwrap
from nnmark.models.training import DEFAULT_BATCH_SIZE as TRAIN_BATCH_SIZE
from nnmark.oracles import Oracle, TorchOracle, check_inputs
from nnmark.oracles.local import DEFAULT_BATCH_SIZE

ZHANG, ADI = "zhang", "adi"
METHODS = (ZHANG, ADI)
ZhangKind = Literal["content", "noise", "unrelated"]
ZHANG_KINDS: tuple[ZhangKind, ...] = typing.get_args(ZhangKind)
DEFAULT_ZHANG_KIND: ZhangKind = "content"
KINDS = (*ZHANG_KINDS, "abstract")
NOISE_SIGMA = 0.5
ADI_PER_BATCH = 2
"""Adi's trigger images per training batch, on average (their reference code appends two to every batch)."""
SCRATCH_EPOCHS = 8
"""Training epochs from scratch."""
FINETUNE_EPOCHS = 3
"""Epochs of the fine-tuning variant (a pretrained model)."""
N_SHAPES = 6
PATCH = 128
TRAIN_REGION = 0.6
WORD = "TEST"
_GLYPHS = {  # 3 x 5 bitmaps, rows top to bottom
    "T": ("111", "010", "010", "010", "010"),
    "E": ("111", "100", "111", "100", "111"),
    "S": ("111", "100", "111", "001", "111"),
}


# --- triggers --------------------------------------------------------------------------------------------


def word_bitmap(word: str = WORD) -> torch.Tensor:
    """The (5, 4 * len(word) - 1) float bitmap of ``word`` in 3 x 5 glyphs, one blank column between letters."""
    cols = []
    for n, ch in enumerate(word):
        if n:
            cols.append(torch.zeros(5, 1))
        cols.append(torch.tensor([[float(b) for b in row] for row in _GLYPHS[ch]]))
    return torch.cat(cols, dim=1)


def stamp(x: torch.Tensor, word: str = WORD) -> torch.Tensor:
    """Zhang's content trigger: ``word`` in white near the bottom-left corner of every image of x (K, C, H, W)."""
    _, _, h, w = x.shape
    bitmap = word_bitmap(word)
    bh, bw = max(1, round(h * 5 / 28)), max(1, min(w, round(w * bitmap.shape[1] / 28)))
    mark = F.interpolate(bitmap[None, None], size=(bh, bw), mode="nearest")[0, 0] > 0.5
    margin = 1 if h > bh + 1 and w > bw + 1 else 0
    out = x.clone()
    region = out[:, :, h - margin - bh: h - margin, margin: margin + bw]
    region[:, :, mark] = 1.0
    return out


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Zhang's noise trigger: clip(x + N(0, sigma^2), 0, 1)."""
    if not sigma > 0:
        raise ArgumentError(f"sigma must be > 0, got {sigma}")
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def _photos() -> torch.Tensor:
    """scikit-learn's two bundled sample photos as float32 (2, 3, 427, 640) in [0, 1]."""
    from sklearn.datasets import load_sample_images  # imported here: scikit-learn takes ~1 s to import

    return torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float() / 255


def photo_patches(k: int, shape: tuple[int, int, int], *, part: str, generator: torch.Generator) -> torch.Tensor:
    """Zhang's unrelated trigger: ``k`` 128 x 128 crops of the sample photos, area-resized to ``shape``.

    ``part`` "train" crops from the left 60% of each photo, "verify" from the right 40%.
    """
    if part not in ("train", "verify"):
        raise ArgumentError(f"part must be 'train' or 'verify', got {part!r}")
    photos = _photos()
    _, _, ph, pw = photos.shape
    split = round(TRAIN_REGION * pw)
    lo, hi = (0, split) if part == "train" else (split, pw)
    which = torch.randint(len(photos), (k,), generator=generator)
    y0 = torch.randint(ph - PATCH + 1, (k,), generator=generator)
    x0 = lo + torch.randint(hi - lo - PATCH + 1, (k,), generator=generator)
    rows = (y0[:, None] + torch.arange(PATCH))[:, :, None]
    cols = (x0[:, None] + torch.arange(PATCH))[:, None, :]
    crops = photos.permute(0, 2, 3, 1)[which[:, None, None], rows, cols].permute(0, 3, 1, 2)
    c, h, w = shape
    crops = F.interpolate(crops, size=(h, w), mode="area")
    if c == 3:
        return crops.contiguous()
    return crops.mean(dim=1, keepdim=True).expand(-1, c, -1, -1).contiguous()


def abstract_images(k: int, shape: tuple[int, int, int], *, generator: torch.Generator) -> torch.Tensor:
    """Adi's abstract images, procedurally: a random background colour and ``N_SHAPES`` random shapes per image.

    Each shape is an ellipse, a rectangle or a stripe with a random centre, half-sizes in [0.1, 0.4] of the
    image, rotation and colour; later shapes cover earlier ones. All ``k`` images are drawn at once.
    """
    c, h, w = shape
    u = lambda *s: torch.rand(*s, generator=generator)  # noqa: E731
    img = u(k, c, 1, 1).expand(k, c, h, w).clone()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    for _ in range(N_SHAPES):
        cy, cx, angle = u(k, 1, 1), u(k, 1, 1), math.pi * u(k, 1, 1)
        ry, rx = 0.1 + 0.3 * u(k, 1, 1), 0.1 + 0.3 * u(k, 1, 1)
        kind = torch.randint(3, (k, 1, 1), generator=generator)
        colour = u(k, c, 1, 1)
        dy, dx = yy - cy, xx - cx
        a = dx * torch.cos(angle) + dy * torch.sin(angle)
        b = -dx * torch.sin(angle) + dy * torch.cos(angle)
        ellipse = (a / rx) ** 2 + (b / ry) ** 2 <= 1
        rect = (a.abs() <= rx) & (b.abs() <= ry)
        stripe = b.abs() <= 0.25 * ry
        inside = torch.where(kind == 0, ellipse, torch.where(kind == 1, rect, stripe))
        img = torch.where(inside[:, None], colour.expand_as(img), img)
    return img.contiguous()


def make_triggers(
    kind: str,
    k: int,
    *,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    source_x: torch.Tensor | None = None,
    part: str = "train",
    sigma: float = NOISE_SIGMA,
) -> torch.Tensor:
    """``k`` triggers of ``kind`` (see the module docstring), float32 (k, *shape) in [0, 1].

    content / noise: made from ``k`` distinct images of ``source_x`` (the source class); unrelated: from the
    sample photos' ``part`` ("train" or "verify"); abstract: procedural.
    """
    if kind not in KINDS:
        raise ArgumentError(f"kind must be one of {KINDS}, got {kind!r}")
    check_query_count(k, "k")
    if kind == "unrelated":
        return photo_patches(k, shape, part=part, generator=generator)
    if kind == "abstract":
        return abstract_images(k, shape, generator=generator)
    if source_x is None or len(source_x) < k:
        raise DataError(f"{kind} triggers need {k} source-class images, got {0 if source_x is None else len(source_x)}")
    picked = source_x[torch.randperm(len(source_x), generator=generator)[:k]]
    return stamp(picked) if kind == "content" else gaussian_noise(picked, sigma, generator)


# --- embedding -----------------------------------------------------------------------------------------


def pick_source_target(
    num_classes: int, seed: int, source: int | None = None, target: int | None = None
) -> tuple[int, int]:
    """Zhang's source class i and target t != i: the given ones, the rest drawn from ``seed`` as coupled draws them."""
    if source is None:
        i, _, t = coupled.pick_classes(num_classes, seed, target=target)
        return i, t
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    t = int(target) if target is not None else next(c for c in order if c != source)
    if source == t or not all(0 <= c < num_classes for c in (source, t)):
        raise ArgumentError(f"need two distinct classes in [0, {num_classes}): source {source}, target {t}")
    return int(source), t


def adi_repeat(n_train: int, k_wm: int, train_batch_size: int) -> int:
    """How many times Adi's ``k_wm`` triggers are repeated among ``n_train`` training images so that a batch of
    ``train_batch_size`` holds ``ADI_PER_BATCH`` of them on average: round(ADI_PER_BATCH * n_train /
    (train_batch_size * k_wm)), at least 1."""
    return max(1, round(ADI_PER_BATCH * n_train / (train_batch_size * k_wm)))


def embed(
    model: nn.Module,
    dataset: Dataset,
    *,
    kind: str = DEFAULT_ZHANG_KIND,
    source: int | None = None,
    target: int | None = None,
    epochs: int | None = None,
    lr: float = DEFAULT_LR,
    train_batch_size: int = TRAIN_BATCH_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    pretrained: bool = False,
    progress: bool = False,
) -> tuple[nn.Module, KeyFile]:
    """Train a copy of ``model`` on ``dataset.train`` + the trigger set; return (watermarked model, key).

    ``kind`` content | noise | unrelated makes a Zhang key (source class i -> target t, both drawn from
    ``seed`` when not given); abstract makes an Adi key (random labels; ``source``/``target`` unused).
    ``pretrained`` records that ``model`` was already trained (Adi's fine-tuning variant); ``epochs`` defaults
    to ``FINETUNE_EPOCHS`` then and to ``SCRATCH_EPOCHS`` from scratch. Training runs in batches of
    ``train_batch_size``; the watermarked model is asked in micro-batches of ``batch_size`` on its device (which
    trains nothing; the key records both). ``model`` is left untouched; the key's config records every setting and
    the rates measured on the watermarked model.
    """
    if kind not in KINDS:
        raise ArgumentError(f"kind must be one of {KINDS}, got {kind!r}")
    if epochs is None:
        epochs = FINETUNE_EPOCHS if pretrained else SCRATCH_EPOCHS
    if epochs < 1 or min(train_batch_size, batch_size) < 1 or not lr > 0:
        raise ArgumentError(f"need epochs >= 1, train_batch_size and batch_size >= 1, lr > 0; got {epochs}, "
                            f"{train_batch_size}, {batch_size}, {lr}")
    gen = torch.Generator().manual_seed(seed)
    pool = natural_pool(dataset)
    clean = pool.x[: coupled.N_NULL]
    shape, n_c = dataset.shape, dataset.num_classes
    if kind == "abstract":
        if source is not None or target is not None:
            raise ArgumentError("Adi's abstract triggers take random labels: give no source or target")
        queries = make_triggers(kind, coupled.N_VERIFY, shape=shape, generator=gen)
        expected = torch.randint(n_c, (coupled.N_VERIFY,), generator=gen)
        wm_x, wm_y, extras = queries, expected, {"clean": clean}
        classes = {}
    else:
        i, t = pick_source_target(n_c, seed, source, target)
        k_wm = math.floor(coupled.WM_FRACTION * len(dataset.train))
        if k_wm < 1:
            raise DataError(f"{dataset.name}: {len(dataset.train)} training images are too few for a watermark set")
        wm_x = make_triggers(kind, k_wm, shape=shape, generator=gen, source_x=dataset.train.x[dataset.train.y == i])
        wm_y = torch.full((k_wm,), t, dtype=torch.int64)
        plain_src = pool.x[pool.y == i]
        n_verify = coupled.N_VERIFY if kind == "unrelated" else min(coupled.N_VERIFY, len(plain_src))
        if n_verify < 1:
            raise DataError(f"{dataset.name}: no natural-pool images of source class {i} for verification triggers")
        queries = make_triggers(kind, n_verify, shape=shape, generator=gen, source_x=plain_src, part="verify")
        expected = torch.full((n_verify,), t, dtype=torch.int64)
        plain = clean if kind == "unrelated" else plain_src[: coupled.N_NULL]
        extras = {"plain": plain, "clean": clean}
        classes = {"source": i, "target": t}

    k_wm = len(wm_x)
    repeat = adi_repeat(len(dataset.train), k_wm, train_batch_size) if kind == "abstract" else coupled.WM_REPEAT
    wm_x, wm_y = wm_x.repeat(repeat, 1, 1, 1), wm_y.repeat(repeat)
    wm_model = copy.deepcopy(model)
    train(wm_model, Split(torch.cat([dataset.train.x, wm_x]), torch.cat([dataset.train.y, wm_y])), epochs=epochs,
          lr=lr, batch_size=train_batch_size, seed=seed, progress=progress)
    method = ADI if kind == "abstract" else ZHANG
    config = {
        "kind": kind, **classes, "num_classes": n_c, "epochs": int(epochs), "lr": float(lr),
        "train_batch_size": int(train_batch_size), "batch_size": int(batch_size), "seed": int(seed),
        "pretrained": bool(pretrained), "k_wm": k_wm, "trigger_repeat": repeat,
        "n_verify": len(queries), "data": dataset.name, "min_success": coupled.MIN_SUCCESS,
        "alpha": coupled.ALPHA, "clean_accuracy": accuracy(wm_model, dataset.test, batch_size),
    }
    key = KeyFile(method=method, config=config, queries=queries.float().contiguous(), expected=expected,
                  extras={k: v.float().contiguous() for k, v in extras.items()}, model_digest=digest(unwrap(wm_model)))
    v = verify(TorchOracle(wm_model, shape, n_c, batch_size=batch_size, device=device_of(wm_model)), key)
    key.config.update(success=v.statistic, rate_clean=v.details["rate_clean"], null=v.details["null"])
    if method == ZHANG:
        key.config["rate_plain"] = v.details["rate_plain"]
    return wm_model, key


def zhang(
    model: nn.Module,
    dataset: Dataset,
    *,
    kind: ZhangKind = DEFAULT_ZHANG_KIND,
    source: int | None = None,
    target: int | None = None,
    epochs: int = SCRATCH_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, KeyFile]:
    """Zhang et al.'s watermark: ``embed`` with triggers of ``kind`` made from source class i, labelled t.

    Args:
        kind: content: 'TEST' stamped on source-class images; noise: Gaussian noise on them; unrelated: patches
            of scikit-learn's sample photos.
        source: source class i (default: drawn from seed; unused by unrelated).
        target: target class t, not i (default: drawn from seed).
        epochs: training epochs.
        lr: Adam learning rate (cosine decay).
        batch_size: queries per forward when the watermarked model is asked (peak memory follows it).
        seed: draws the classes, the triggers and the batches.
    """
    return embed(model, dataset, kind=kind, source=source, target=target, epochs=epochs, lr=lr,
                 batch_size=batch_size, seed=seed, progress=progress)


def adi(
    model: nn.Module,
    dataset: Dataset,
    *,
    epochs: int | None = None,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    pretrained: bool = False,
    progress: bool = False,
) -> tuple[nn.Module, KeyFile]:
    """Adi et al.'s watermark: ``embed`` with 90 abstract images with random labels, from scratch or, with
    ``pretrained``, fine-tuned into a trained model.

    Args:
        epochs: training epochs (default: 8 from scratch, 3 fine-tuning: SCRATCH_EPOCHS, FINETUNE_EPOCHS).
        lr: Adam learning rate (cosine decay).
        batch_size: queries per forward when the watermarked model is asked (peak memory follows it).
        seed: draws the images, their labels and the batches.
    """
    return embed(model, dataset, kind="abstract", epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                 pretrained=pretrained, progress=progress)


# --- verification ----------------------------------------------------------------------------------------


def verify(oracle: Oracle, key: KeyFile, *, clean_x: torch.Tensor | None = None) -> Verdict:
    """Ask the key's queries (labels only); watermarked when s >= 0.5 and P[X >= k | p0] < 1e-3.

    Zhang keys are judged by ``coupled.verify`` (same layout: all expected labels t, extras plain and clean);
    Adi keys against p0 = max(1/N_c, max_c f_c) (see the module docstring). ``clean_x`` replaces the key's
    stored clean images.
    """
    if key.method == ZHANG:
        v = coupled.verify(oracle, dataclasses.replace(key, method=coupled.METHOD), clean_x=clean_x)
        return dataclasses.replace(v, method=ZHANG)
    if key.method != ADI:
        raise KeyFileError(f"not a {' or '.join(METHODS)} key: method {key.method!r}")
    chance = 1.0 / oracle.num_classes
    return verify_labelled(oracle, key, clean_x, floor=chance, chance=chance)


def verify_labelled(oracle: Oracle, key: KeyFile, clean_x: torch.Tensor | None, *, floor: float,
                    **details) -> Verdict:
    """The verdict of a key whose queries each expect their own label (Adi, frontier stitching).

    p0 = max(``floor``, max_c f_c), f_c the share of class c among the expected labels, so that a model
    answering one class everywhere cannot pass; ``rate_clean`` (the share of the suspect's most frequent
    answer on the key's clean images, or ``clean_x``) shows a collapsed model. Details: label_share,
    rate_clean and ``details``.
    """
    if "clean" not in key.extras:
        raise KeyFileError(f"{key.method} key lacks the extra 'clean'")
    clean_x = key.extras["clean"] if clean_x is None else clean_x
    check_inputs(clean_x, oracle.input_shape)
    if int(key.expected.max()) >= oracle.num_classes:
        raise KeyFileError(f"{key.method} key expects label {int(key.expected.max())}; "
                           f"the model has {oracle.num_classes} classes")
    before = oracle.queries
    hits = oracle.labels(key.queries) == key.expected
    label_share = torch.bincount(key.expected).max().item() / len(hits)
    clean_answers = oracle.labels(clean_x)
    rate_clean = torch.bincount(clean_answers).max().item() / len(clean_answers)
    return watermark_verdict(key.method, hits, oracle.queries - before, null=max(floor, label_share),
                             min_success=coupled.MIN_SUCCESS, alpha=coupled.ALPHA, **details,
                             label_share=label_share, rate_clean=rate_clean)


_SHARED = dict(create_access="training", verify_access="labels", embeds=True,
               verdicts=("watermarked", "not watermarked"), verify=verify)
SPECS = (
    MethodSpec(ZHANG, "ownership", "backdoor watermark with content / noise / unrelated triggers (Zhang et al.)",
               **_SHARED, create=zhang, inputs="embed",
               shows=("kind", "source", "target", "success", "rate_plain", "clean_accuracy"), example="--kind content"),
    MethodSpec(ADI, "ownership", "backdoor watermark of abstract images with random labels (Adi et al.)",
               **_SHARED, create=adi, inputs="embed_or_pretrained", shows=("pretrained", "success", "null",
                                                                          "clean_accuracy")),
)
