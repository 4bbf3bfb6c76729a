"""Overwriting attack: train the attacker's own watermark set into a stolen model, mixed with clean data.

Paper: Wen et al., "On function-coupled watermarks for deep neural networks" (2023), sec. 5.3, Table 3: the
adversary embeds a second watermark made "with a similar watermarking strategy but changing the watermark
samples, source classes and target class", at learning rate 1e-4; both watermarks are then measured.

The attack only needs the new trigger images and labels (the caller makes them, e.g. with
``coupled.make_triggers`` on other classes; attacks never import marks) and some clean labelled data so the
model keeps its accuracy. Training: Adam at a constant ``lr`` (default 1e-4) over clean + triggers, all
layers, train mode, minibatches of ``batch_size`` (default 64) in an order drawn from ``seed`` each epoch
(as ``nnmark.attacks.transfer``).

Example::

    attacked = overwrite(model, x_new, torch.full((len(x_new),), t_new), attacker_data(ds), epochs=5, seed=0)
"""

from __future__ import annotations

import torch
from torch import nn

from nnmark.attacks.registry import register_attack
from nnmark.attacks.transfer import DEFAULT_BATCH_SIZE, DEFAULT_LR, transfer
from nnmark.data import Split
from nnmark.errors import ArgumentError

EPOCHS = 5


@register_attack("overwrite",
                 summary="Overwriting: train the attacker's own watermark set into the model, with clean data.",
                 applies_to="any classifier; needs the attacker's watermark set and clean data", data="watermark")
def overwrite(model: nn.Module, x_wm: torch.Tensor, y_wm: torch.Tensor, clean: Split, *, lr: float = DEFAULT_LR,
              epochs: int = EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> nn.Module:
    """Return a copy of ``model`` trained ``epochs`` epochs on ``clean`` plus the new watermark set (x_wm, y_wm).

    Args:
        x_wm: the attacker's trigger images (K, C, H, W) in [0, 1].
        y_wm: their labels (K,) int64.
        clean: clean labelled data (``.x``, ``.y``) that keeps the model's accuracy.
        lr: Adam learning rate, > 0.
        epochs: passes over clean + triggers.
        batch_size: images per step.
        seed: seeds the minibatch order.
    """
    if len(x_wm) == 0 or len(x_wm) != len(y_wm):
        raise ArgumentError(f"need as many watermark labels as images, and at least one; got {len(x_wm)}, {len(y_wm)}")
    x = torch.cat([clean.x, x_wm])
    y = torch.cat([clean.y, y_wm])
    return transfer(model, Split(x, y), lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
