"""Prune-then-fine-tune: magnitude pruning per layer, then fine-tuning with the pruned weights held at zero.

Paper: Yang et al., "MetaFinger" (IJCAI 2022), sec. 5.1 "Weight pruning" and 5.2: prune p% (10% to
70%) of the parameters with the smallest absolute value at each layer (Han et al. 2015, "Learning
both weights and connections for efficient neural networks") by setting them to zero, then
fine-tune to restore accuracy.

Choices: the pruning is ``nnmark.attacks.prune.prune(model, p, scope="layer")``: "each layer" is the
``weight`` of every ``nn.Conv2d`` and ``nn.Linear`` (biases and BatchNorm parameters are not pruned, as
in Han et al.), each losing its ``round(p * numel)`` entries of smallest |w|. Fine-tuning trains all
layers like FTAL (SGD, momentum 0.9, constant lr; see ``nnmark.attacks.modes``) with a mask
(``torch.nn.utils.prune.custom_from_mask``, mask = weight != 0 after pruning, so a weight that was
already exactly zero counts as pruned) applied in every forward pass, so pruned weights stay exactly
zero; the masks are then made permanent (``prune.remove``), leaving a plain model with the usual
parameter names.

Arguments: fraction p in [0, 1); x (N, C, H, W) float32 in [0, 1]; y (N,) int64 in [0, K), K the outputs
of the model's last ``nn.Linear`` (as in ``nnmark.attacks.modes``).
Returns a new model in eval mode; the input model is untouched; the same seed gives the same weights.

Example::

    thief = prune_finetune(model, attacker.x, attacker.y, fraction=0.5, epochs=5, seed=0)
    models.accuracy(thief, dataset.test)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from nnmark.attacks.measure import weight_layers
from nnmark.attacks.modes import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, MOMENTUM, check_labelled
from nnmark.attacks.prune import FRACTION, prune
from nnmark.attacks.registry import ACCURACY, register_attack
from nnmark.errors import ArgumentError
from nnmark.models.training import fit


@register_attack("prune-finetune",
                 summary="Prune each layer's smallest weights, then fine-tune with the pruned ones held at zero.",
                 applies_to="models with Conv2d or Linear layers and a last nn.Linear; needs attacker data",
                 data="attacker", reports=ACCURACY)
def prune_finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fraction: float = FRACTION,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> nn.Module:
    """Return a copy of ``model`` with ``fraction`` of each layer's weights pruned, then fine-tuned with the masks kept.

    Args:
        model: the stolen model (left untouched).
        x: attacker images (N, C, H, W) float32 in [0, 1]; y: their labels (N,) int64.
        fraction: p, the share of each layer's weights set to zero; the paper sweeps 0.1 to 0.7.
        epochs: fine-tuning passes over (x, y) (0: prune only).
        lr: SGD learning rate (momentum 0.9).
        batch_size: images per step.
        seed: seeds the minibatch order (pruning itself is deterministic).
    """
    if not 0 <= fraction < 1:
        raise ArgumentError(f"fraction must lie in [0, 1), got {fraction}")
    check_labelled(model, x, y)
    attacked = prune(model, fraction, scope="layer")
    layers = [m for _, m in weight_layers(attacked)]
    for layer in layers:
        torch_prune.custom_from_mask(layer, "weight", mask=layer.weight.detach() != 0)
    fit(attacked, x, y, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, optimizer="sgd", momentum=MOMENTUM)
    for layer in layers:
        torch_prune.remove(layer, "weight")
    return attacked.eval()
