"""Weight-noise attack: Gaussian noise on every parameter."""

from __future__ import annotations

import copy

import torch


def weight_noise(model: torch.nn.Module, std: float, *, seed: int = 0) -> torch.nn.Module:
    """Return a copy of ``model`` with N(0, std^2) noise added to every parameter (buffers untouched).

    Yin et al., Tables 8-11: std 1e-3, 5e-4, 1e-4. Draws in ``named_parameters`` order from a ``seed``ed generator.
    """
    if std < 0:
        raise ValueError("std must be >= 0")
    attacked = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in attacked.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return attacked.eval()
