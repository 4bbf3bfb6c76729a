"""Fine-pruning: prune the last convolutional layer's channels that stay dormant on clean data, then fine-tune.

Paper: Liu, Dolan-Gavitt, Garg, "Fine-pruning: defending against backdooring attacks on deep neural networks"
(RAID 2018), https://arxiv.org/abs/1805.12185, sec. 4: the defender runs clean data through the network,
ranks the channels of the last convolutional layer by their mean activation, removes them in increasing order
(the paper stops once validation accuracy drops by 4 %), then fine-tunes the pruned network on clean data. A
removal attack on watermarks and fingerprints that live in channels the task leaves idle (Lukas et al., SoK 2022).

Choices: "the last convolutional layer" is the model's last ``nn.Conv2d`` in ``modules()`` order; a channel's
activation is its output after the ``nn.BatchNorm2d`` that directly follows the layer (if one does) and a ReLU,
averaged over the clean images (eval mode) and positions; the ``round(fraction * C)`` least active channels are
pruned (ties: the lower index first) by zeroing their filter and bias and that BatchNorm's weight and bias, so the
channel outputs exactly 0 whatever the running statistics. The pruned channels are held at zero while fine-tuning
(SGD, momentum 0.9, constant lr, as ``nnmark.attacks.modes``). ``fraction`` is the strength the benchmark sweeps
in place of the paper's accuracy-drop rule.

Inputs: x (N, C, H, W) float32 in [0, 1], the thief's clean data, for both the activations and the fine-tuning;
y (N,) int64 in [0, K). Returns a new model in eval mode and a :class:`FinePruneReport`; the input model is
untouched; the same seed gives the same weights.

Example::

    pruned, report = fine_prune(model, thief.x, thief.y, fraction=0.8, epochs=5, test=ds.test)
    report.pruned, report.test_accuracy
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnmark.attacks.measure import split_accuracy
from nnmark.attacks.modes import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, MOMENTUM, check_labelled
from nnmark.attacks.registry import register_attack
from nnmark.errors import ArgumentError, ModelError
from nnmark.models.training import device_of, fit

FRACTION = 0.5
ACTIVATION_BATCH = 500
"""Images per forward pass while measuring the activations."""


@dataclass(frozen=True)
class FinePruneReport:
    """What ``fine_prune`` removed and what the copy is worth.

    Attributes:
        layer: the pruned layer's module name.
        pruned: the pruned channel indices, least active first.
        activation: every channel's mean activation on the clean data, before pruning.
        pruned_accuracy: test accuracy right after pruning, before fine-tuning (None without a test split).
        test_accuracy: test accuracy after fine-tuning (None without a test split).
    """

    layer: str
    pruned: tuple[int, ...]
    activation: tuple[float, ...]
    pruned_accuracy: float | None
    test_accuracy: float | None

    def __str__(self) -> str:
        acc = "" if self.test_accuracy is None else (f"; test accuracy {self.pruned_accuracy:.2%} pruned, "
                                                     f"{self.test_accuracy:.2%} fine-tuned")
        return f"pruned {len(self.pruned)} of {len(self.activation)} channels of {self.layer}{acc}"


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d, nn.BatchNorm2d | None]:
    """(name, layer, the BatchNorm2d right after it or None) of the model's last ``nn.Conv2d``."""
    modules = list(model.named_modules())
    convs = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__} has no nn.Conv2d layer to fine-prune")
    name, conv = modules[convs[-1]]
    after = modules[convs[-1] + 1][1] if convs[-1] + 1 < len(modules) else None
    norm = after if isinstance(after, nn.BatchNorm2d) and after.num_features == conv.out_channels else None
    return name, conv, norm


@torch.no_grad()
def channel_activation(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean ReLU'd output of each channel of ``layer`` over the images ``x`` and all positions: (C,)."""
    was_training = model.training
    model.eval()
    sums = []
    handle = layer.register_forward_hook(lambda m, i, out: sums.append(F.relu(out).mean(dim=(2, 3)).sum(dim=0)))
    try:
        device = device_of(model)
        for xb in x.split(ACTIVATION_BATCH):
            model(xb.to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.stack(sums).sum(dim=0) / len(x)


def zero_channels(conv: nn.Conv2d, norm: nn.BatchNorm2d | None, channels: torch.Tensor) -> None:
    """Zero the filters and biases of ``channels`` in ``conv``, and their weight and bias in ``norm``."""
    with torch.no_grad():
        for layer in (conv, norm):
            for p in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
                if p is not None:
                    p[channels] = 0


@register_attack("fine-prune", summary="Fine-pruning (Liu et al.): prune the last conv layer's dormant channels, then "
                 "fine-tune.", applies_to="models with an nn.Conv2d; needs attacker data", data="attacker",
                 reports=True, needs=("layers",))
def fine_prune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fraction: float = FRACTION,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    test: object | None = None,
) -> tuple[nn.Module, FinePruneReport]:
    """Return a fine-pruned copy of ``model`` and a :class:`FinePruneReport`; ``model`` is untouched.

    Args:
        x: the thief's clean images (N, C, H, W) in [0, 1]; y: their labels (N,) int64.
        fraction: share of the last conv layer's channels pruned, least active first, in [0, 1].
        epochs: fine-tuning passes over (x, y) (0: prune only).
        lr: SGD learning rate (momentum 0.9).
        batch_size: images per step.
        seed: seeds the minibatch order (pruning itself is deterministic).
        test: a labelled split for the accuracies in the report.
    """
    if not 0 <= fraction <= 1:
        raise ArgumentError(f"fraction must lie in [0, 1], got {fraction}")
    check_labelled(model, x, y)
    attacked = copy.deepcopy(model)
    name, conv, norm = last_conv(attacked)
    activation = channel_activation(attacked, norm or conv, x)
    pruned = torch.argsort(activation, stable=True)[: round(fraction * len(activation))]
    zero_channels(conv, norm, pruned)
    pruned_accuracy = split_accuracy(attacked, test)
    fit(attacked, x, y, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, optimizer="sgd", momentum=MOMENTUM,
        after_step=lambda: zero_channels(conv, norm, pruned))
    report = FinePruneReport(name, tuple(pruned.tolist()), tuple(activation.tolist()), pruned_accuracy,
                             split_accuracy(attacked, test))
    return attacked, report
