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

import torch
import torch.nn.functional as F
from torch import nn

from nnmark.data import validate
from nnmark.errors import ModelError

MODES = ("FTLL", "FTAL", "RTLL", "RTAL")
DEFAULT_EPOCHS = 10
DEFAULT_LR = 0.01
DEFAULT_BATCH_SIZE = 64
MOMENTUM = 0.9


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` in ``modules()`` order: the "last layer" of FTLL/RTLL/RTAL."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer to fine-tune or re-initialise")
    return linears[-1]


def reinitialize(layer: nn.Linear, generator: torch.Generator) -> None:
    """Redraw ``layer``'s weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in place (torch's default)."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)


def check_labelled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ``DataError`` unless (x, y) is a labelled image set for the classes of ``model``'s last layer."""
    validate(x, y, last_linear(model).out_features, source="attacker data")


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled index batches; a last batch of one sample joins the one before (BatchNorm needs two)."""
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def fit(
    model: nn.Module,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    train_mode: bool,
) -> nn.Module:
    """Train ``params`` of ``model`` in place: ``epochs`` passes of SGD (momentum 0.9, constant ``lr``), cross-entropy.

    Parameters outside ``params`` get no gradient and keep their values. ``train_mode`` False runs the
    forward passes in eval mode (BatchNorm statistics and dropout frozen). Returns the model in eval mode.
    """
    if epochs < 0 or not lr >= 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0, lr >= 0 and batch_size >= 1, got {epochs}, {lr}, {batch_size}")
    trainable = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in trainable)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    model.train(train_mode)
    for _ in range(epochs):
        for idx in _batches(len(x), batch_size, generator):
            idx = idx.to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    for p, flag in flags:
        p.requires_grad_(flag)
    return model.eval()


def finetune_mode(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mode: str,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> nn.Module:
    """Return a copy of ``model`` attacked by ``mode`` (FTLL, FTAL, RTLL or RTAL; see the module docstring).

    Args:
        model: the stolen model (left untouched).
        x: attacker images (N, C, H, W) float32 in [0, 1]; y: their labels (N,) int64.
        mode: "FTLL" | "FTAL" | "RTLL" | "RTAL".
        epochs: passes over (x, y), default 10 (0: RTLL/RTAL only re-initialise).
        lr: SGD learning rate (momentum 0.9), default 0.01.
        batch_size: default 64.
        seed: seeds the re-initialisation (drawn first) and the minibatch order.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_labelled(model, x, y)
    attacked = copy.deepcopy(model)
    last = last_linear(attacked)
    gen = torch.Generator().manual_seed(seed)
    if mode.startswith("RT"):
        reinitialize(last, gen)
    all_layers = mode.endswith("AL")
    params = list(attacked.parameters()) if all_layers else list(last.parameters())
    return fit(attacked, params, x, y, epochs=epochs, lr=lr, batch_size=batch_size, generator=gen,
               train_mode=all_layers)
