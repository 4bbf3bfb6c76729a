"""Pruning attack: L1 magnitude pruning of Conv2d/Linear weights (Gao et al. sec. 4.1, Fig. 3).

Paper: Gao et al., "Sample-pairing fragile watermark", Fig. 3 prunes 0.1% and more of the weights; pruning
after Han et al. 2015 ("Learning both weights and connections for efficient neural networks").

Arguments:
    fraction: share of weights set to zero, in [0, 1) (the paper's smallest: 0.001).
    scope: ``"global"`` ranks all Conv2d/Linear weights together (``prune.global_unstructured`` with
        ``L1Unstructured``); ``"layer"`` prunes ``fraction`` of each layer (``prune.l1_unstructured``).
Biases, BatchNorm and buffers are untouched. The count pruned is ``round(fraction * n)`` (torch's rule)
over all n weights (global) or each layer's n (layer). The masks are made permanent (``prune.remove``),
so the result is a plain module holding zeros. No randomness: ties are broken by ``torch.topk``.

Example::

    attacked = prune(model, 0.001)
    measure.sparsity(attacked)   # 0.001 of all weights (LeNet-5: round(61.47) = 61 of 61,470)
"""

from __future__ import annotations

import copy
from typing import Literal

from torch import nn
from torch.nn.utils import prune as torch_prune

from nnmark.attacks.measure import weight_layers
from nnmark.attacks.registry import register_attack
from nnmark.errors import ArgumentError

Scope = Literal["global", "layer"]
FRACTION = 0.1
DEFAULT_SCOPE = "global"


@register_attack("prune", applies_to="models with Conv2d or Linear layers", needs=("layers",),
                 summary="Zero the smallest-magnitude fraction of Conv2d/Linear weights (L1, global or per layer).")
def prune(model: nn.Module, fraction: float = FRACTION, *, scope: Scope = DEFAULT_SCOPE) -> nn.Module:
    """Return a copy of ``model`` with the ``fraction`` smallest-|w| Conv2d/Linear weights set to 0, in eval mode.

    Args:
        fraction: share of weights set to zero, in [0, 1).
        scope: rank all weights together (global) or prune that fraction of each layer (layer).
    """
    if not 0 <= fraction < 1:
        raise ArgumentError(f"fraction must lie in [0, 1), got {fraction}")
    if scope not in ("global", "layer"):
        raise ArgumentError(f"scope must be 'global' or 'layer', got {scope!r}")
    attacked = copy.deepcopy(model)
    layers = [m for _, m in weight_layers(attacked)]
    if not layers:
        raise ArgumentError("the model has no Conv2d or Linear layer to prune")
    if scope == "global":
        torch_prune.global_unstructured([(m, "weight") for m in layers], torch_prune.L1Unstructured, amount=fraction)
    else:
        for m in layers:
            torch_prune.l1_unstructured(m, "weight", amount=fraction)
    for m in layers:
        torch_prune.remove(m, "weight")
    return attacked.eval()
