"""Function-coupled watermarks: feature-fusion triggers, masked training, training-time fine-tuning (Wen et al.).

Paper: Wen, Li, Jiang, Xu, "On function-coupled watermarks for deep neural networks" (2023).
Access: the owner trains the model (white box) to embed; labels only to verify.

The triggers are fused from two in-distribution images of base classes i and j and labelled with a
third class t (eq. 1): *direct* fusion puts x_i in the top-left and x_j in the bottom-right of a
2H x 2W white canvas (eq. 2b); *invisible* fusion blends them, r * x_i + (1 - r) * x_j (eq. 3b).
The model is trained on the training data plus the watermark set WM with a random weight mask M per
epoch (eq. 4-6), and after every epoch fine-tuned once over held-out in-distribution data at a small
learning rate eta', masked the same way (eq. 7-8, Algorithm 1).

Symbols and defaults:
    N_c: number of classes; i, j: base classes; t: target class, t not in {i, j} (drawn from ``seed``
        when not given).
    K_wm: size of WM, under 1% of the training data: ``floor(0.009 * N_train)`` (paper: "less than 1%").
    wm_repeat: how often each of the K_wm triggers appears in an epoch's training data (default
        ``WM_REPEAT`` = 5, about 1.6 triggers per batch of 32 on mnist5k; Adi's reference code likewise puts
        triggers in every batch). The paper is silent; with each trigger seen once per epoch (36 among 3,600
        images on mnist5k, 8 epochs) the model does not even fit WM: invisible r = 0.5 reached 39% on its own
        training triggers and 23% on the verification triggers, with 5 repeats 100% and 91%. K_wm, the
        number of distinct triggers, stays under 1%.
    r: invisible-fusion ratio, 0 < r < 1 (paper: 0.5, 0.7, 0.9; default 0.5).
    keep_ratio: the fraction of each weight tensor M keeps (default 0.9). The paper's p is used both as
        "the ratio of the preserved elements" and in the 1/(1-p) scaling, which only keeps the expectation
        if p is the ratio *masked*; nnmark names the kept fraction and scales by 1/keep_ratio, the
        inverted-dropout rule that keeps E[(W * M) / keep_ratio] = W.
    eta: learning rate on normal and watermark data (Adam, default 2e-3, cosine decay, batch 32, as
        ``nnmark.models.train``); eta': ``finetune_lr`` (Adam, constant, default 1e-4).
    K_ft: the held-out fine-tuning set X_ft: the last 10% of a seeded permutation of the training split,
        never trained on by the main pass and never used for triggers.
    verification set: 90 triggers made the same way from the first half of the test split
        (``nnmark.data.roles.natural_pool``), images the model never trained on.

Choices the paper leaves open:
    - the 2H x 2W direct canvas becomes an H x W input by 2x2 area averaging (``avg_pool2d(canvas, 2)``),
      so x_i fills the top-left quadrant at half resolution, x_j the bottom-right, the rest is white (1.0);
    - M is drawn over the ``weight`` of every Conv2d and Linear layer (biases, BatchNorm untouched) and
      keeps exactly ``round(keep_ratio * n)`` entries of each tensor; one M per epoch (Algorithm 1 line 4);
    - "update only the kept weights": the masked forward makes the gradient of masked entries zero
      (eq. 6), and entries outside M are restored after each optimizer step so that Adam's momentum
      cannot move them either;
    - pairs (p, q) of base instances are distinct pairs drawn without replacement from X_i x X_j;
    - BatchNorm: training runs on the batch statistics of the masked network, so the running averages it
      leaves do not fit inference with the full W (eq. 5): ResNet-20 at width 0.5 after 5 epochs, 49% test
      accuracy as trained, 97% once re-estimated. After the last epoch they are re-estimated with the full
      W over the training data incl. WM (``reestimate_bn``), in every variant (masked or not).

Where the paper is not reproduced: invisible triggers with r = 0.9 (and partly 0.7) are not learned on
mnist5k. 0.9 x_i + 0.1 x_j differs from a clean image of class i only by a faint ghost of x_j, yet must be
answered t while x_i is answered i. With 5 to 30 repeats LeNet-5 (seed 0) fits under half of its own 36
training triggers and answers t on 1% to 38% of the held-out verification triggers, and trying costs clean
accuracy (bench, r = 0.9: -3 pp); r = 0.7 fits its training triggers but reaches only ~65% on held-out ones.
The paper reports 100% for all r on every dataset and does not say whether its 90 "validation images" are
held out.

Verification (labels only): the authentication success rate s = k / n is the share of the n
verification triggers answered t. Its one-sided binomial p-value P[X >= k], X ~ B(n, p0), is taken
against the null p0 = max(1/N_c, rate_plain, rate_clean), where rate_plain is how often the suspect
answers t on plain images of classes i and j (stored in the key) and rate_clean on clean images of all
classes (stored in the key, or ``clean_x``; true class-t images count, so for a healthy model it is
about t's share of the data): a model that answers t to everything is not watermarked.
Verification spends n + |plain| + |clean| queries (mnist5k: 90 + 104 + 300).
The watermark is found (``passed``, CLI exit 0) when s >= 0.5 and p < 1e-3.

Example::

    wm_model, key = coupled.embed(models.build("lenet5", ds.shape, 10), ds, kind="direct", epochs=6, seed=0)
    verdict = coupled.verify(LabelsOracle(TorchOracle(suspect, ds.shape)), key)   # passed: owner's mark found
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from nnmark.data import Dataset, Split
from nnmark.data.roles import natural_pool
from nnmark.errors import ArgumentError, DataError, KeyFileError
from nnmark.keys import KeyFile, check_query_count
from nnmark.marks.ownership.stats import watermark_verdict
from nnmark.marks.spec import MethodSpec
from nnmark.marks.verdict import Verdict
from nnmark.models import DEFAULT_LR, accuracy, batchnorm_layers, device_of, digest
from nnmark.models.card import unwrap
from nnmark.models.training import (
    DEFAULT_BATCH_SIZE as TRAIN_BATCH_SIZE, Loss, batches_per_epoch, cosine_schedule, index_batches, make_optimizer,
    train_batches,
)
from nnmark.oracles import Oracle, TorchOracle, check_inputs
from nnmark.oracles.local import DEFAULT_BATCH_SIZE

METHOD = "coupled"
Kind = Literal["direct", "invisible"]
KINDS: tuple[Kind, ...] = typing.get_args(Kind)
DEFAULT_KIND: Kind = "direct"
PAPER_RATIOS = (0.5, 0.7, 0.9)
DEFAULT_R = PAPER_RATIOS[0]
EPOCHS = 8
KEEP_RATIO = 0.9
FINETUNE_LR = 1e-4
WM_FRACTION = 0.009
FT_FRACTION = 0.1
WM_REPEAT = 5
N_VERIFY = 90
N_NULL = 300
MIN_SUCCESS = 0.5
ALPHA = 1e-3


# --- triggers (eq. 1-3) ------------------------------------------------------------------------------


def pick_classes(
    num_classes: int, seed: int, base: tuple[int, int] | None = None, target: int | None = None
) -> tuple[int, int, int]:
    """Base classes i, j and target t, t not in {i, j} (eq. 1b): the given ones, the rest drawn from ``seed``."""
    if num_classes < 3:
        raise ArgumentError(f"function-coupled watermarks need at least 3 classes, got {num_classes}")
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    i, j = (int(c) for c in base) if base is not None else [c for c in order if c != target][:2]
    t = int(target) if target is not None else next((c for c in order if c not in (i, j)), i)
    if len({i, j, t}) != 3 or not all(0 <= c < num_classes for c in (i, j, t)):
        raise ArgumentError(f"need three distinct classes in [0, {num_classes}): base {(i, j)}, target {t}")
    return i, j, t


def direct_fusion(x_i: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
    """wm = X_i^p (+) X_j^q, eq. 2b: x_i top-left, x_j bottom-right of a white 2H x 2W canvas, 2x2 area-averaged.

    x_i, x_j: (K, C, H, W) in [0, 1]; returns (K, C, H, W).
    """
    k, c, h, w = x_i.shape
    canvas = torch.ones(k, c, 2 * h, 2 * w, dtype=x_i.dtype)
    canvas[:, :, :h, :w] = x_i
    canvas[:, :, h:, w:] = x_j
    return F.avg_pool2d(canvas, 2)


def invisible_fusion(x_i: torch.Tensor, x_j: torch.Tensor, r: float) -> torch.Tensor:
    """wm = r * X_b1^p + (1 - r) * X_b2^q, eq. 3b; x_i, x_j (K, C, H, W) in [0, 1]."""
    if not 0 < r < 1:
        raise ArgumentError(f"r must lie in (0, 1) (paper: {PAPER_RATIOS}), got {r}")
    return r * x_i + (1 - r) * x_j


def base_pairs(n_i: int, n_j: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (p, q) of ``k`` distinct pairs drawn without replacement from X_i x X_j."""
    if k > n_i * n_j:
        raise DataError(f"cannot draw {k} distinct base pairs from {n_i} x {n_j} images")
    flat = torch.randperm(n_i * n_j, generator=generator)[:k]
    return flat // n_j, flat % n_j


def make_triggers(
    split: Split, base: tuple[int, int], k: int, *, kind: str, r: float, generator: torch.Generator
) -> torch.Tensor:
    """WM = {wm_1 .. wm_K}, eq. 1a: ``k`` triggers fused (``kind``) from distinct pairs of ``split``'s classes i, j."""
    if kind not in KINDS:
        raise ArgumentError(f"kind must be one of {KINDS}, got {kind!r}")
    check_query_count(k, "k")
    x_i, x_j = (split.x[split.y == c] for c in base)
    if len(x_i) == 0 or len(x_j) == 0:
        raise DataError(f"no images of base class {base[0] if len(x_i) == 0 else base[1]} to fuse")
    p, q = base_pairs(len(x_i), len(x_j), k, generator)
    if kind == "direct":
        return direct_fusion(x_i[p], x_j[q])
    return invisible_fusion(x_i[p], x_j[q], r)


# --- masked training (eq. 4-6) -----------------------------------------------------------------------


def maskable(model: nn.Module) -> list[str]:
    """Names of the ``weight`` parameters of every Conv2d and Linear layer: the tensors M covers."""
    return [f"{name}.weight" if name else "weight" for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


def draw_masks(model: nn.Module, keep_ratio: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """M ~ Prune(random, p), eq. 4: per weight tensor a bool mask keeping exactly round(keep_ratio * n) entries."""
    if not 0 < keep_ratio <= 1:
        raise ArgumentError(f"keep_ratio must lie in (0, 1], got {keep_ratio}")
    params = dict(model.named_parameters())
    masks = {}
    for name in maskable(model):
        w = params[name]
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[torch.randperm(w.numel(), generator=generator)[: round(keep_ratio * w.numel())]] = True
        masks[name] = keep.view_as(w).to(w.device)
    return masks


def masked_forward(
    model: nn.Module, masks: dict[str, torch.Tensor], keep_ratio: float, x: torch.Tensor
) -> torch.Tensor:
    """y = f(((W * M) / keep_ratio) x + b), eq. 4, through ``functional_call`` (the module's W stays full)."""
    params = dict(model.named_parameters())
    weights = {name: params[name] * m / keep_ratio for name, m in masks.items()}
    return functional_call(model, weights, (x,))


def masked_loss(masks: dict[str, torch.Tensor], keep_ratio: float) -> Loss:
    """The ``fit`` loss hook of eq. 4-6: cross-entropy of the masked forward, so masked entries get zero gradient."""
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(masked_forward(model, masks, keep_ratio, x), y)
    return loss


def restore_unmasked(model: nn.Module, masks: dict[str, torch.Tensor]) -> Callable[[], None]:
    """The ``after_step`` hook of eq. 6: put every entry outside M back to its value now, after each optimizer step.

    The masked forward gives those entries a zero gradient, but an optimizer's momentum would still move them.
    """
    params = dict(model.named_parameters())
    frozen = {name: params[name].detach().clone() for name in masks}

    @torch.no_grad()
    def restore() -> None:
        for name, m in masks.items():
            params[name].copy_(torch.where(m, params[name], frozen[name]))
    return restore


def masked_epoch(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    keep_ratio: float,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """Algorithm 1 lines 6-9 (and, on X_ft, lines 10-11 = eq. 7-8): one pass of masked steps; mean loss.

    Each step is W' = W - eta * (dL/dW * M) / keep_ratio (eq. 6; eq. 7 with eta'), entries outside M unchanged:
    ``models.training.train_batches`` with the ``masked_loss`` and ``restore_unmasked`` hooks.
    """
    model.train()
    _, loss = train_batches(model, x, y, optimizer, index_batches(len(x), batch_size, generator),
                            loss=masked_loss(masks, keep_ratio), scheduler=scheduler,
                            after_step=restore_unmasked(model, masks))
    return loss


# --- embedding (Algorithm 1) ---------------------------------------------------------------------------


@torch.no_grad()
def reestimate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> None:
    """Re-estimate every BatchNorm's running mean and variance in place with the full W over ``x`` (eq. 5).

    Masked training (eq. 4) runs BatchNorm on the statistics of (W * M) / keep_ratio, so the running
    averages it leaves describe a network that inference (eq. 5, the full W) never runs. They are reset and
    recomputed as the cumulative average over ``x`` (no labels, no gradient, weights untouched); each
    layer's momentum is restored afterwards. A no-op for models without BatchNorm; leaves ``model`` in eval mode.
    """
    norms = batchnorm_layers(model)
    if norms:
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for xb in x.split(batch_size):
            model(xb)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    model.eval()


def finetune_split(train: Split, seed: int) -> tuple[Split, Split]:
    """(training part, X_ft): X_ft is the last ``FT_FRACTION`` of a permutation of ``train`` drawn from ``seed``."""
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_ft = max(1, round(FT_FRACTION * len(train)))
    keep, ft = perm[:-n_ft], perm[-n_ft:]
    return Split(train.x[keep], train.y[keep]), Split(train.x[ft], train.y[ft])


@torch.no_grad()
def target_rate(oracle: Oracle, x: torch.Tensor, target: int) -> float:
    """Share of ``x`` that ``oracle`` labels ``target`` (labels only)."""
    return (oracle.labels(x) == target).float().mean().item()


def embed(
    model: nn.Module,
    dataset: Dataset,
    *,
    kind: Kind = DEFAULT_KIND,
    r: float = DEFAULT_R,
    base: tuple[int, int] | None = None,
    target: int | None = None,
    epochs: int = EPOCHS,
    keep_ratio: float = KEEP_RATIO,
    lr: float = DEFAULT_LR,
    finetune_lr: float = FINETUNE_LR,
    train_batch_size: int = TRAIN_BATCH_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    masked: bool = True,
    tt_finetune: bool = True,
    wm_repeat: int = WM_REPEAT,
    progress: bool = False,
) -> tuple[nn.Module, KeyFile]:
    """Algorithm 1: train a copy of ``model`` on ``dataset.train`` + WM; return (watermarked model, key).

    ``masked=False`` trains with the full W (keep_ratio ignored); ``tt_finetune=False`` skips the pass
    over X_ft; ``wm_repeat`` copies of WM join the training data. BatchNorm statistics are re-estimated with
    the full W at the end. The key's queries are the 90 verification triggers, its expected labels t; its extras
    hold plain images of classes i and j ("plain") and clean images of all classes ("clean") from the
    natural pool, for the verifier's null rates; its config records every setting and the rates measured
    on the watermarked model. ``model`` is left untouched.

    Args:
        kind: direct: x_i top-left, x_j bottom-right on white (eq. 2); invisible: r*x_i + (1-r)*x_j (eq. 3).
        r: invisible-fusion ratio in (0, 1) (paper: 0.5, 0.7, 0.9).
        base: base classes i j (default: drawn from seed).
        target: target class t, not i or j (default: drawn from seed).
        epochs: training epochs.
        keep_ratio: fraction of each weight tensor the random mask keeps (1/keep-ratio scaling).
        lr: eta, the Adam learning rate of the main pass (cosine decay).
        finetune_lr: eta' of the training-time fine-tuning pass.
        train_batch_size: training batch size.
        batch_size: queries per forward when the watermarked model is asked (peak memory follows it; no trained
            weight depends on it).
        seed: draws the classes, triggers, masks and batches.
        masked: train with the random weight mask (off: with the full W, an ablation).
        tt_finetune: run the training-time fine-tuning pass (off: skip it, an ablation).
        wm_repeat: copies of each watermark trigger in the training data per epoch.
    """
    if kind not in KINDS:
        raise ArgumentError(f"kind must be one of {KINDS}, got {kind!r}")
    if epochs < 1 or min(train_batch_size, batch_size) < 1 or not lr > 0 or not finetune_lr > 0:
        raise ArgumentError(f"need epochs >= 1, train_batch_size and batch_size >= 1, lr > 0, finetune_lr > 0; got "
                            f"{epochs}, {train_batch_size}, {batch_size}, {lr}, {finetune_lr}")
    if not 0 < r < 1:  # refused even where unused (direct fusion): a value outside (0, 1) is a mistake
        raise ArgumentError(f"r must lie in (0, 1) (paper: {PAPER_RATIOS}), got {r}")
    if not 0 < keep_ratio <= 1:
        raise ArgumentError(f"keep_ratio must lie in (0, 1], got {keep_ratio}")
    if wm_repeat < 1:
        raise ArgumentError(f"wm_repeat must be >= 1, got {wm_repeat}")
    i, j, t = pick_classes(dataset.num_classes, seed, base, target)
    gen = torch.Generator().manual_seed(seed)
    train_part, ft = finetune_split(dataset.train, seed)
    k_wm = math.floor(WM_FRACTION * len(dataset.train))
    if k_wm < 1:
        raise DataError(f"{dataset.name}: {len(dataset.train)} training images are too few for a watermark set")
    wm = make_triggers(train_part, (i, j), k_wm, kind=kind, r=r, generator=gen)
    pool = natural_pool(dataset)
    queries = make_triggers(pool, (i, j), N_VERIFY, kind=kind, r=r, generator=gen)
    plain = pool.x[(pool.y == i) | (pool.y == j)][:N_NULL]
    clean = pool.x[:N_NULL]

    x = torch.cat([train_part.x, wm.repeat(wm_repeat, 1, 1, 1)])
    y = torch.cat([train_part.y, torch.full((k_wm * wm_repeat,), t, dtype=torch.int64)])
    wm_model = copy.deepcopy(model)
    device = device_of(wm_model)
    x, y, ft_x, ft_y = x.to(device), y.to(device), ft.x.to(device), ft.y.to(device)
    keep = keep_ratio if masked else 1.0
    opt = make_optimizer(wm_model.parameters(), "adam", lr)
    sched = cosine_schedule(opt, epochs * batches_per_epoch(len(x), train_batch_size))
    ft_opt = make_optimizer(wm_model.parameters(), "adam", finetune_lr)
    bar = tqdm(range(epochs), desc="coupled", unit="epoch", disable=not progress)
    for _ in bar:
        masks = draw_masks(wm_model, keep, gen)
        loss = masked_epoch(wm_model, masks, keep, opt, x, y, batch_size=train_batch_size, generator=gen,
                            scheduler=sched)
        if tt_finetune:
            masked_epoch(wm_model, masks, keep, ft_opt, ft_x, ft_y, batch_size=train_batch_size, generator=gen)
        bar.set_postfix(loss=f"{loss:.4f}")
    reestimate_bn(wm_model, x)

    oracle = TorchOracle(wm_model, dataset.shape, dataset.num_classes, batch_size=batch_size, device=device)
    config = {
        "kind": kind, "r": float(r), "base": [i, j], "target": t, "num_classes": dataset.num_classes,
        "epochs": int(epochs), "keep_ratio": float(keep_ratio), "masked": bool(masked),
        "tt_finetune": bool(tt_finetune), "wm_repeat": int(wm_repeat), "lr": float(lr),
        "finetune_lr": float(finetune_lr), "train_batch_size": int(train_batch_size), "batch_size": int(batch_size),
        "seed": int(seed), "k_wm": k_wm, "k_ft": len(ft), "n_verify": N_VERIFY,
        "data": dataset.name, "min_success": MIN_SUCCESS, "alpha": ALPHA,
        "success": target_rate(oracle, queries, t), "rate_plain": target_rate(oracle, plain, t),
        "rate_clean": target_rate(oracle, clean, t), "clean_accuracy": accuracy(wm_model, dataset.test, batch_size),
    }
    key = KeyFile(
        method=METHOD,
        config=config,
        queries=queries.float().contiguous(),
        expected=torch.full((N_VERIFY,), t, dtype=torch.int64),
        extras={"plain": plain.float().contiguous(), "clean": clean.float().contiguous()},
        model_digest=digest(unwrap(wm_model)),
    )
    return wm_model, key


# --- verification (sec. 4.4) -------------------------------------------------------------------------


def verify(oracle: Oracle, key: KeyFile, *, clean_x: torch.Tensor | None = None) -> Verdict:
    """Ask the verification triggers (labels only); watermarked when s >= 0.5 and P[X >= k | p0] < 1e-3.

    p0 = max(1/N_c, rate_plain, rate_clean) (see the module docstring); ``clean_x`` replaces the key's
    stored clean images. ``passed`` is True when the owner's watermark is found (CLI exit 0).
    """
    if key.method != METHOD:
        raise KeyFileError(f"not a {METHOD} key: method {key.method!r}")
    if "plain" not in key.extras or "clean" not in key.extras:
        raise KeyFileError(f"{METHOD} key lacks the extras 'plain' and 'clean'")
    t = int(key.expected[0])
    if not bool((key.expected == t).all()):
        raise KeyFileError(f"{METHOD} key's expected labels must all be the target class")
    if clean_x is None:
        clean_x = key.extras["clean"]
    check_inputs(clean_x, oracle.input_shape)
    before = oracle.queries
    answers = oracle.labels(key.queries)
    hits = answers == t
    chance = 1.0 / oracle.num_classes
    rate_plain = target_rate(oracle, key.extras["plain"], t)
    rate_clean = target_rate(oracle, clean_x, t)
    return watermark_verdict(METHOD, hits, oracle.queries - before, null=max(chance, rate_plain, rate_clean),
                             min_success=MIN_SUCCESS, alpha=ALPHA, target=t, chance=chance, rate_plain=rate_plain,
                             rate_clean=rate_clean)


SPECS = (MethodSpec(
    METHOD, "ownership", "function-coupled watermark: fused in-distribution triggers, masked training (Wen et al.)",
    create_access="training", verify_access="labels", embeds=True, verdicts=("watermarked", "not watermarked"),
    verify=verify, create=embed, inputs="embed",
    shows=("kind", "base", "target", "success", "rate_plain", "clean_accuracy"),
),)
