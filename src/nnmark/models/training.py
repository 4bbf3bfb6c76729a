"""Deterministic supervised training: one loop (``fit``) for every model, attack and mark that trains.

``fit`` trains a model in place on (x, y): the optimizer (Adam or SGD with momentum), the batches
(epochs of a seeded permutation, or a fixed number of steps from a stream of permutations), the
learning-rate schedule (constant or cosine decay), which parameters train and how BatchNorm runs.
Hooks replace the plain cross-entropy (``loss``: soft targets, masked weights, a weighted mix),
act after each optimizer step (``after_step``) or end training early (``stop``); ``train_batches``
is the inner loop alone, for callers that keep their own optimizer across passes. Inside
``micro_batches(size)`` every step runs its batch in chunks of at most ``size`` samples (peak memory
follows ``size``, not the training batch); ``micro_batches("auto")`` picks for each model the most images whose
activations fit ``ACTIVATION_BUDGET`` (on a CUDA card, a share of its free memory; ``fitting_micro_batch``).

A split is anything with ``.x`` (float32 (N, C, H, W) in [0, 1]) and ``.y`` (int64 (N,)),
as numpy arrays or torch tensors.

Example::

    fit(model, x, y, lr=1e-2, epochs=10, optimizer="sgd", momentum=0.9, seed=0)
    fit(model, x, y, lr=1e-4, steps=100, mode="freeze_bn")   # 100 steps, BatchNorm statistics kept
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nnmark.errors import ArgumentError, DataError, ModelError

DEFAULT_LR = 2e-3
DEFAULT_BATCH_SIZE = 32
DEFAULT_MOMENTUM = 0.0
EVAL_BATCH_SIZE = 1000
"""Images per forward in the no-gradient passes over a set of images (``outputs``, ``accuracy``)."""

Optimizer = Literal["adam", "sgd"]
Schedule = Literal["constant", "cosine"]
Mode = Literal["train", "freeze_bn", "eval"]
Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""(model, x batch, target batch) -> scalar loss; the target is any per-sample tensor (labels, soft labels)."""
AUTO = "auto"
"""The micro-batch that ``fitting_micro_batch`` measures for each model trained."""
ACTIVATION_BUDGET = 1 << 30
"""Bytes of activations that one training forward pass may save for backward under ``micro_batches(AUTO)``: 1 GiB.
A ResNet-50 at 3x224x224 saves 82 MiB an image (12 images a pass), a ViT-S/16 57 MiB (18); LeNet-5, ResNet-20 and
ResNet-18 at their sizes fit more than 200, so their batches (at most 64 in nnmark) never split."""
CARD_SHARE = 0.25
"""On a CUDA card, ``micro_batches(AUTO)``'s budget is this share of the card's free memory where that is more than
``ACTIVATION_BUDGET`` (weights, gradients, optimizer state and backward's own buffers take the rest): an 80 GB card
trains a ResNet-50's batches of 32 whole."""
MicroBatch = int | Literal["auto"] | None
_MICRO_BATCH: ContextVar[MicroBatch] = ContextVar("nnmark_training_micro_batch", default=None)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default ``Loss``: mean cross-entropy of ``model(x)`` against the labels ``y``."""
    return F.cross_entropy(model(x), y)


def index_batches(n: int, batch_size: int, generator: torch.Generator, *, steps: int | None = None
                  ) -> Iterator[torch.Tensor]:
    """Shuffled index batches of range(n), drawn lazily from ``generator``.

    ``steps`` None: one epoch, a permutation cut into ``batch_size`` batches, where a last batch of one
    sample joins the one before (BatchNorm needs two). ``steps`` k: k batches of exactly ``batch_size``
    indices from a stream of permutations (a batch may span two).
    """
    if steps is None:
        batches = list(torch.randperm(n, generator=generator).split(batch_size))
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2:] = [torch.cat(batches[-2:])]
        yield from batches
        return
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many batches ``index_batches`` cuts one epoch of ``n`` samples into."""
    return max(1, n // batch_size + (n % batch_size > 1))


def make_optimizer(params: Iterable[nn.Parameter], optimizer: Optimizer, lr: float,
                   momentum: float = DEFAULT_MOMENTUM) -> torch.optim.Optimizer:
    """Adam (torch defaults) or SGD with ``momentum`` over ``params`` at ``lr``."""
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ArgumentError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """lr_s = lr * (1 + cos(pi s / total_steps)) / 2: from lr to 0 over ``total_steps`` (Loshchilov & Hutter 2017)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))


def set_mode(model: nn.Module, mode: Mode) -> None:
    """Train mode; "freeze_bn": BatchNorm layers in eval mode (running statistics kept); "eval": all in eval mode."""
    if mode not in ("train", "freeze_bn", "eval"):
        raise ArgumentError(f"mode must be 'train', 'freeze_bn' or 'eval', got {mode!r}")
    model.train(mode != "eval")
    if mode == "freeze_bn":
        for m in batchnorm_layers(model):
            m.eval()


def check_micro_batch(size: object, *, auto: bool = True) -> None:
    """ArgumentError unless ``size`` is None (whole batches), an integer >= 1 or (where ``auto``) "auto": a training
    micro-batch."""
    if size is None or (auto and size == AUTO):
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        allowed = "None, 'auto' or an integer >= 1" if auto else "None or an integer >= 1"
        raise ArgumentError(f"a training micro-batch must be {allowed}, got {size!r}")


def saved_bytes_per_image(model: nn.Module, x: torch.Tensor) -> float:
    """Bytes that a forward pass of ``model`` in its own mode saves for backward, per image: the growth from a pass
    of 2 images to one of 3 (the first two of ``x``, repeated), so what a pass saves whatever its size (the
    parameters, a pruned layer's masked weights, BatchNorm's batch statistics) does not count. Each storage counts
    once (``torch.autograd.graph.saved_tensors_hooks``). The passes leave no trace: the model's buffers (BatchNorm's
    running statistics) are restored and the random generators forked (dropout draws from copies). A loss that asks
    more of the model (two passes, features) saves more."""
    if len(x) < 1:
        raise ArgumentError("measuring a forward pass's activations needs at least 1 image")
    images = x[:2].to(device_of(model))
    buffers = [(b, b.clone()) for b in model.buffers()]

    def saved(k: int) -> int:
        sizes: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        batch = images[torch.arange(k, device=images.device) % len(images)]  # a storage of its own, not x's
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch)
        return sum(sizes.values())

    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            return float(saved(3) - saved(2))
    finally:
        with torch.no_grad():
            for buffer, kept in buffers:
                buffer.copy_(kept)


def activation_budget(device: torch.device) -> float:
    """Bytes of activations a training pass may save on ``device``: ``ACTIVATION_BUDGET``, or on a CUDA card
    ``CARD_SHARE`` of its free memory where that is more."""
    if device.type == "cuda":
        return max(ACTIVATION_BUDGET, CARD_SHARE * torch.cuda.mem_get_info(device)[0])
    return ACTIVATION_BUDGET


def fitting_micro_batch(model: nn.Module, x: torch.Tensor, budget: float | None = None) -> int:
    """The most images (at least 1) whose forward pass through ``model`` saves at most ``budget`` bytes for backward
    (default ``activation_budget`` of the model's device; ``saved_bytes_per_image`` on the first images of ``x``)."""
    budget = activation_budget(device_of(model)) if budget is None else budget
    return max(1, int(budget // max(saved_bytes_per_image(model, x), 1.0)))


def resolve_micro_batch(size: MicroBatch, model: nn.Module, x: torch.Tensor, batch_size: int) -> int | None:
    """``size`` as ``micro_batches`` runs it for training ``model`` on batches of at most ``batch_size`` images of
    ``x``: "auto" gives ``fitting_micro_batch``, or None (whole batches) where the batch fits whole; an integer or
    None stays."""
    check_micro_batch(size)
    if size != AUTO:
        return size
    fitting = fitting_micro_batch(model, x)
    return None if fitting >= batch_size else fitting


@contextlib.contextmanager
def micro_batches(size: MicroBatch) -> Iterator[None]:
    """Within the block, each training step (``train_batches``, so ``fit``, ``train`` and the attacks and shadow models
    built on them) runs its batch in chunks of at most ``size`` samples and sums their gradients, each chunk's loss
    weighted by its share of the batch, before the one optimizer step: peak memory follows ``size``, not the training
    batch. Exact (up to the order of floating-point sums) for a loss that is a mean of per-sample terms on a model
    without batch statistics; BatchNorm normalises each chunk by its own statistics and updates its running statistics
    once per chunk (ghost batch normalisation), so such a model trains to slightly different weights. None: whole
    batches (the default); "auto": each training loop measures its model once, on its first batch
    (``fitting_micro_batch``), and splits only the batches that would not fit ``ACTIVATION_BUDGET``."""
    check_micro_batch(size)
    token = _MICRO_BATCH.set(size)
    try:
        yield
    finally:
        _MICRO_BATCH.reset(token)


def train_batches(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[torch.Tensor],
    *,
    loss: Loss = cross_entropy,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    after_step: Callable[[], None] | None = None,
    stop: Callable[[int], bool] | None = None,
) -> tuple[int, float]:
    """The training loop: one optimizer step on ``loss(model, x[idx], y[idx])`` per index batch (in the chunks of
    ``micro_batches`` when inside one).

    Before step s, ``stop(s)`` True ends the loop; after each step the ``scheduler`` steps and ``after_step``
    runs. The model's mode is the caller's. Returns (steps taken, mean loss per sample seen).
    """
    total, seen, steps = 0.0, 0, 0
    size = _MICRO_BATCH.get()
    for idx in batches:
        if size == AUTO:  # measured once, on the first batch's images
            size = fitting_micro_batch(model, x[idx[:2].to(x.device)])
        if stop is not None and stop(steps):
            break
        idx = idx.to(x.device)
        optimizer.zero_grad(set_to_none=True)
        value = 0.0
        for chunk in (idx,) if size is None else idx.split(size):
            part = loss(model, x[chunk], y[chunk])
            if len(chunk) < len(idx):
                part = part * (len(chunk) / len(idx))
            part.backward()
            value += part.item()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        total += value * len(idx)
        seen += len(idx)
        steps += 1
    return steps, total / max(seen, 1)


def _check_fit(x: torch.Tensor, y: torch.Tensor, lr: float, epochs: int | None, steps: int | None, batch_size: int,
               optimizer: Optimizer, schedule: Schedule) -> None:
    if (epochs is None) == (steps is None):
        raise ArgumentError("give exactly one of epochs and steps")
    if (epochs if steps is None else steps) < 0 or batch_size < 1:
        raise ArgumentError(f"need epochs or steps >= 0 and batch_size >= 1, got {epochs or steps}, {batch_size}")
    if not (lr > 0 if optimizer == "adam" else lr >= 0):
        raise ArgumentError(f"need lr {'> 0 for Adam' if optimizer == 'adam' else '>= 0'}, got {lr}")
    if schedule not in ("constant", "cosine"):
        raise ArgumentError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if len(x) != len(y) or len(x) == 0:
        raise ArgumentError(f"need as many targets as images, and at least one image; got {len(x)}, {len(y)}")


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int | torch.Generator = 0,
    optimizer: Optimizer = "adam",
    momentum: float = DEFAULT_MOMENTUM,
    schedule: Schedule = "constant",
    mode: Mode = "train",
    params: Sequence[nn.Parameter] | None = None,
    loss: Loss = cross_entropy,
    after_step: Callable[[], None] | None = None,
    stop: Callable[[int], bool] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> int:
    """Train ``model`` in place and leave it in eval mode; return the optimizer steps taken.

    Args:
        x: images (N, C, H, W); y: per-sample targets (N, ...), both moved to the model's device.
        lr: learning rate (>= 0; > 0 for Adam).
        epochs: passes over (x, y), each in a fresh permutation (``index_batches``); or
        steps: that many batches of exactly ``batch_size`` from a stream of permutations.
        batch_size: samples per step.
        seed: seeds the batch order, or a ``torch.Generator`` the caller shares (drawn lazily, batch by batch).
        optimizer: "adam" (torch defaults) or "sgd" (with ``momentum``).
        momentum: SGD momentum.
        schedule: "constant" lr, or "cosine" decay from lr to 0 over all steps.
        mode: "train"; "freeze_bn" (BatchNorm in eval mode, its statistics untouched); "eval" (every layer).
        params: the parameters that train (default all); the others get no gradient and keep their values.
        loss: the ``Loss`` hook (default cross-entropy on labels).
        after_step: called after each optimizer step (e.g. to restore weights a mask keeps).
        stop: called with the step index before each step; True ends training early.
        progress: show a progress bar over the steps.
        desc: the progress bar's label.
    """
    _check_fit(x, y, lr, epochs, steps, batch_size, optimizer, schedule)
    trained = list(model.parameters()) if params is None else list(params)
    device = device_of(model)
    x, y = x.to(device), y.to(device)
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    opt = make_optimizer(trained, optimizer, lr, momentum)
    total = steps if steps is not None else epochs * batches_per_epoch(len(x), batch_size)
    sched = cosine_schedule(opt, max(1, total)) if schedule == "cosine" else None
    set_mode(model, mode)
    trainable = {id(p) for p in trained}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in trainable)
    if steps is None:
        batches = itertools.chain.from_iterable(index_batches(len(x), batch_size, gen) for _ in range(epochs))
    else:
        batches = index_batches(len(x), batch_size, gen, steps=steps)
    try:
        taken, _ = train_batches(model, x, y, opt, tqdm(batches, desc=desc, unit="step", total=total,
                                                        disable=not progress),
                                 loss=loss, scheduler=sched, after_step=after_step, stop=stop)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    model.eval()
    return taken


def _tensors(split: object, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``split.x`` and ``split.y`` as float32/int64 tensors on ``device``, shapes checked."""
    x = torch.as_tensor(split.x, dtype=torch.float32, device=device)
    y = torch.as_tensor(split.y, dtype=torch.int64, device=device)
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise DataError(
            f"a split needs x of shape (N, C, H, W) and y of shape (N,) with N >= 1, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return x, y


def device_of(model: nn.Module) -> torch.device:
    """Where ``model`` runs: the device of its first parameter, else of its first buffer, else the CPU."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of ``model`` (1d, 2d, 3d), in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def train(
    model: nn.Module,
    train_split: object,
    *,
    epochs: int,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` in place with Adam on cross-entropy; the same seed gives the same weights.

    The learning rate decays from ``lr`` to 0 along a cosine over all steps (Loshchilov & Hutter
    2017), so the final weights do not depend on where in a noisy phase training stopped. Each
    epoch visits the samples in an order drawn from ``torch.Generator().manual_seed(seed)``
    (``fit(..., optimizer="adam", schedule="cosine")``).
    Returns the model in eval mode. LeNet-5 on 4000 MNIST images: 8 epochs give 0.96-0.97.
    """
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ModelError(f"need epochs >= 0, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    x, y = _tensors(train_split, device_of(model))
    fit(model, x, y, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, schedule="cosine", progress=progress)
    return model


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """``model``'s outputs on ``x`` (N, ...), asked in eval mode (restored afterwards) in batches of ``batch_size``
    moved one at a time to the model's device, where the (N, K) result stays."""
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    device = device_of(model)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(xb.to(device)) for xb in x.split(batch_size)])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, split: object, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Fraction of ``split`` that ``model`` (in eval mode, restored afterwards) classifies right."""
    x, y = _tensors(split, torch.device("cpu"))
    predicted = outputs(model, x, batch_size).argmax(1).cpu()
    return int((predicted == y).sum()) / len(x)
