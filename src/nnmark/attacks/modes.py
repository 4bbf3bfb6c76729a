"""Fine-tuning modes FTLL, FTAL, RTLL, RTAL: the model-modification attacks of Adi et al.

Paper: Adi, Baum, Cisse, Pinkas, Keshet, "Turning your weakness into a strength: watermarking deep
neural networks by backdooring" (USENIX Security 2018), as used by Yang et al., "MetaFinger"
(IJCAI 2022), sec. 5.1 "Fine-tuning". The attacker fine-tunes a stolen model on its own labelled
data (``nnmark.data.roles.attacker_data``, disjoint from the owner's key samples):

- FTLL (fine-tune last layer): train the last layer, freeze all others;
- FTAL (fine-tune all layers): train every parameter;
- RTLL (re-train last layer): re-initialise the last layer at random, then train only it;
- RTAL (re-train all layers): re-initialise the last layer at random, then train every parameter.

Choices (neither the MetaFinger text nor this module's sources fix them):

- "last layer" is the model's last ``nn.Linear`` in ``modules()`` order (the classifier of every
  nnmark zoo model); a model without one is refused with ``ModelError``;
- re-initialisation draws the layer's weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  torch's default ``nn.Linear`` initialisation, from the attack's ``seed``ed generator;
- optimizer: SGD with momentum 0.9 at a constant ``lr`` (default 0.01), cross-entropy, minibatches
  of ``batch_size`` (default 64) in an order drawn from the same generator each epoch; default
  ``epochs`` 10;
- FTAL/RTAL train in train mode (BatchNorm statistics update, dropout on); FTLL/RTLL train with the
  frozen part in eval mode, so every tensor but the last layer's weight and bias stays bit-identical.

Arguments: x (N, C, H, W) float32 in [0, 1]; y (N,) int64 in [0, K), K the last layer's outputs.
Returns a new model in eval mode; the input model is untouched; the same seed gives the same weights.

Example::

    thief = finetune_mode(model, attacker.x, attacker.y, mode="RTAL", epochs=10, seed=0)
    models.accuracy(thief, dataset.test)
"""

from __future__ import annotations

import copy
import math
import typing
from typing import Literal

import torch
from torch import nn

from nnmark.attacks.registry import ACCURACY, register_attack
from nnmark.data import validate
from nnmark.errors import ArgumentError, DataError, ModelError
from nnmark.models.training import fit, outputs

Mode = Literal["FTLL", "FTAL", "RTLL", "RTAL"]
MODES: tuple[str, ...] = typing.get_args(Mode)
DEFAULT_MODE = "FTAL"
DEFAULT_EPOCHS = 10
DEFAULT_LR = 0.01
DEFAULT_BATCH_SIZE = 64
MOMENTUM = 0.9
UNCHECKED_CLASSES = 2**62
"""The class count ``validate`` is given before the model's own K is known (labels are then checked against K)."""


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` in ``modules()`` order: the "last layer" of FTLL/RTLL/RTAL."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer to fine-tune or re-initialise")
    return linears[-1]


def reinitialize(layer: nn.Linear, generator: torch.Generator) -> None:
    """Redraw ``layer``'s weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in place (torch's default), drawn
    on the CPU (``generator``'s device) whatever the layer's device."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        for p in (layer.weight, layer.bias) if layer.bias is not None else (layer.weight,):
            p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-bound, bound, generator=generator))


def output_classes(model: nn.Module, x: torch.Tensor) -> int:
    """K, the width of ``model``'s output on the first image of ``x`` (in eval mode, on the model's device; the
    model's mode is restored); ModelError when the model cannot run on it."""
    try:
        return int(outputs(model, x[:1]).shape[1])
    except Exception as e:  # any failure of the model's own code on these images
        raise ModelError(f"the model fails on images of shape {tuple(x.shape[1:])} ({type(e).__name__})") from None


def check_labelled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ``DataError`` unless (x, y) is a labelled image set for ``model``'s K classes (K from one forward pass,
    once x is checked)."""
    validate(x, y, UNCHECKED_CLASSES, source="attacker data")
    k = output_classes(model, x)
    if int(y.max()) >= k:
        raise DataError(f"attacker data: y has label {int(y.max())} but the model has only {k} classes")


@register_attack("finetune-mode", summary="FTLL, FTAL, RTLL or RTAL on attacker data disjoint from the key's samples.",
                 applies_to="FTAL: any classifier; FTLL, RTLL, RTAL: models whose last layer is an nn.Linear; needs "
                           "attacker data", data="attacker", reports=ACCURACY)
def finetune_mode(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mode: Mode = DEFAULT_MODE,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> nn.Module:
    """Return a copy of ``model`` attacked by ``mode`` (FTLL, FTAL, RTLL or RTAL; see the module docstring).

    Args:
        model: the stolen model (left untouched).
        x: attacker images (N, C, H, W) float32 in [0, 1]; y: their labels (N,) int64.
        mode: Adi et al.: fine-tune (FT) or re-train (RT) the last layer (LL) or all layers (AL).
        epochs: passes over (x, y) (0: RTLL/RTAL only re-initialise).
        lr: SGD learning rate (momentum 0.9).
        batch_size: images per step.
        seed: seeds the re-initialisation (drawn first) and the minibatch order.
    """
    if mode not in MODES:
        raise ArgumentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_labelled(model, x, y)
    attacked = copy.deepcopy(model)
    last = None if mode == "FTAL" else last_linear(attacked)  # FTAL trains every layer, whatever the last one is
    gen = torch.Generator().manual_seed(seed)
    if mode.startswith("RT"):
        reinitialize(last, gen)
    all_layers = mode.endswith("AL")
    params = list(attacked.parameters()) if all_layers else list(last.parameters())
    fit(attacked, x, y, lr=lr, epochs=epochs, batch_size=batch_size, seed=gen, optimizer="sgd", momentum=MOMENTUM,
        mode="train" if all_layers else "eval", params=params)
    return attacked
