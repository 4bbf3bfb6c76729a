"""Fine-tuning attack: all layers, plain SGD, on the attacker's own labelled data.

Paper: Gao et al., "Sample-pairing fragile watermark", Table 3 fine-tunes at lr 1e-10 ... 1e-3; the
fragile-watermark papers (DBI, AID) likewise fine-tune a few steps.

Example::

    attacked = finetune(model, attacker.x, attacker.y, lr=1e-4, steps=100, seed=0)
"""

from __future__ import annotations

import copy

import torch

from nnmark.attacks.registry import register_attack
from nnmark.models.training import fit

LR = 1e-4
STEPS = 100
BATCH_SIZE = 64


@register_attack("finetune", summary="Fine-tune all layers with SGD on attacker data disjoint from the key's samples.",
                 applies_to="any nn.Module; needs attacker data", data="attacker")
def finetune(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float = LR,
    steps: int = STEPS,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    freeze_bn: bool = False,
) -> torch.nn.Module:
    """Return a copy of ``model`` after ``steps`` SGD steps (cross-entropy, all parameters) at ``lr``.

    Minibatches of exactly ``batch_size`` come from a stream of permutations of (x, y) drawn from a
    ``seed``ed generator. The copy is fine-tuned in train mode (BatchNorm running statistics update,
    as a real fine-tune does) and returned in eval mode. ``freeze_bn=True`` keeps every BatchNorm layer
    in eval mode instead (its running statistics untouched, its affine parameters still trained), so
    that what changes is the weights the learning rate scales: a train-mode fine-tune moves the running
    statistics by the BatchNorm momentum whatever ``lr`` is, even at lr = 0.

    Args:
        x: attacker images (N, C, H, W) in [0, 1], disjoint from the key's source samples.
        y: their labels (N,) int64.
        lr: SGD learning rate (no momentum), >= 0.
        steps: SGD minibatch steps.
        batch_size: images per step.
        seed: seeds the minibatch order.
        freeze_bn: keep BatchNorm running statistics as they are (eval-mode BatchNorm).
    """
    attacked = copy.deepcopy(model)
    fit(attacked, x, y, lr=lr, steps=steps, batch_size=batch_size, seed=seed, optimizer="sgd",
        mode="freeze_bn" if freeze_bn else "train")
    return attacked
