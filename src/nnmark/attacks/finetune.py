"""Fine-tuning attack: all layers, plain SGD, on the attacker's own labelled data."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from nnmark.models import batchnorm_layers


def finetune(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
    freeze_bn: bool = False,
) -> torch.nn.Module:
    """Return a copy of ``model`` after ``steps`` SGD steps (cross-entropy, all parameters) at ``lr``.

    Minibatches are drawn by reshuffling (x, y) with a ``seed``ed generator each pass. The copy is
    fine-tuned in train mode (BatchNorm running statistics update, as a real fine-tune does) and returned
    in eval mode. ``freeze_bn=True`` keeps every BatchNorm layer in eval mode instead (its running
    statistics untouched, its affine parameters still trained), so that what changes is the weights
    the learning rate scales: a train-mode fine-tune moves the running statistics by the BatchNorm
    momentum whatever ``lr`` is, even at lr = 0.

    Args:
        x: attacker images (N, C, H, W) in [0, 1], disjoint from the key's source samples.
        y: their labels (N,) int64.
    """
    if steps < 0 or lr < 0 or batch_size < 1:
        raise ValueError("steps and lr must be >= 0 and batch_size >= 1")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("finetune needs as many labels as images, and at least one image")
    attacked = copy.deepcopy(model).train()
    if freeze_bn:
        for m in batchnorm_layers(attacked):
            m.eval()
    opt = torch.optim.SGD(attacked.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(x), generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(attacked(x[idx]), y[idx]).backward()
        opt.step()
    return attacked.eval()
