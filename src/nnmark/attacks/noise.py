"""Weight-noise attacks: Gaussian noise on every parameter, absolute or relative to each tensor's std; and the
relative noise followed by a fine-tune, as MetaFinger's attacker does."""

from __future__ import annotations

import copy

import torch

from nnmark.attacks.modes import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, finetune_mode
from nnmark.attacks.registry import ACCURACY, register_attack
from nnmark.errors import ArgumentError

STD = 1e-4
ALPHA = 10.0


@register_attack("noise", summary="Add Gaussian noise N(0, std^2) to every parameter.", applies_to="any nn.Module")
def weight_noise(model: torch.nn.Module, std: float = STD, *, seed: int = 0) -> torch.nn.Module:
    """Return a copy of ``model`` with N(0, std^2) noise added to every parameter (buffers untouched).

    Yin et al., Tables 8-11: std 1e-3, 5e-4, 1e-4. Draws in ``named_parameters`` order from a ``seed``ed generator.

    Args:
        std: the noise's standard deviation, >= 0.
        seed: seeds the noise.
    """
    if not std >= 0:
        raise ArgumentError(f"std must be >= 0, got {std}")
    attacked = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in attacked.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * std)
    return attacked.eval()


@register_attack("relnoise", applies_to="any nn.Module",
                 summary="Add N(0, (std(param)/alpha)^2) noise to each parameter tensor (MetaFinger eq. 1).")
def relative_weight_noise(model: torch.nn.Module, alpha: float = ALPHA, *, seed: int = 0) -> torch.nn.Module:
    """Return a copy of ``model`` with eq. 1 of MetaFinger applied to every parameter tensor (buffers untouched).

    Paper: Yang et al., "MetaFinger: fingerprinting the deep neural networks with meta-training"
    (IJCAI 2022), eq. 1, the "DNN augmentation" and "weight noising" attack:
    param += GaussianNoise(0, std(param) / alpha), layer by layer; small alpha, large noise.

    Choices: "one layer" is one parameter tensor (a layer's weight and its bias each get their own
    std); std(param) is the sample standard deviation over all the tensor's elements (the released
    code instead uses the std over dim 0 of conv weights only); a one-element tensor, whose sample
    std is undefined, uses |param|. The paper fine-tunes afterwards; chain ``finetune_mode`` for that.
    Draws in ``named_parameters`` order from a ``seed``ed generator.

    Args:
        alpha: > 0, the noise is std(param) / alpha (the paper's text gives no value; its Fig. 3(c)/4(c) sweep it).
        seed: seeds the noise.

    Example::

        noisy = relative_weight_noise(model, alpha=5.0, seed=0)
        thief = finetune_mode(noisy, attacker.x, attacker.y, mode="FTAL")
    """
    if not alpha > 0:
        raise ArgumentError(f"alpha must be > 0, got {alpha}")
    attacked = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in attacked.named_parameters():
            scale = p.abs().reshape(()) if p.numel() == 1 else p.std()
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * (scale / alpha))
    return attacked.eval()


@register_attack("noise-finetune", applies_to="any classifier; needs attacker data", data="attacker", reports=ACCURACY,
                 summary="Relative weight noise (MetaFinger eq. 1), then fine-tune all layers (FTAL).")
def noise_finetune(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float = ALPHA,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> torch.nn.Module:
    """Return ``finetune_mode(relative_weight_noise(model, alpha), x, y, mode="FTAL")``: MetaFinger's noise attack
    with the fine-tune its paper runs afterwards, so the noise can be strong and the accuracy still recover.

    Args:
        x: attacker images (N, C, H, W) float32 in [0, 1]; y: their labels (N,) int64.
        alpha: > 0, the noise is std(param) / alpha (small alpha, large noise).
        epochs: fine-tuning passes over (x, y) (SGD, momentum 0.9).
        lr: SGD learning rate.
        batch_size: images per step.
        seed: seeds the noise and the minibatch order.
    """
    noisy = relative_weight_noise(model, alpha, seed=seed)
    return finetune_mode(noisy, x, y, mode="FTAL", epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
