"""Metrics shared by the marks and the benchmarks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nnmark.errors import ArgumentError


def change_rate(expected: torch.Tensor, observed: torch.Tensor) -> float:
    """ChangeRate (Yin et al., eq. 5): the fraction of samples whose label differs from the expected one."""
    if expected.shape != observed.shape:
        raise ArgumentError(f"label shapes differ: {tuple(expected.shape)} vs {tuple(observed.shape)}")
    return (expected != observed).float().mean().item()


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, one value per sample of (N, C, H, W); inf where x == ref."""
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), one value per sample of (N, C, H, W).

    Gaussian window of ``window`` x ``window`` (sigma 1.5), K1 = 0.01, K2 = 0.03, 'valid' positions only,
    averaged over positions and channels. Images smaller than the window use the largest odd window that fits.
    """
    if x.shape != ref.shape or x.dim() != 4:
        raise ArgumentError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    size = min(window, x.shape[2], x.shape[3])
    size -= 1 - size % 2
    c = x.shape[1]
    w = _gaussian_window(size, sigma).expand(c, 1, size, size)
    a, b = x.double(), ref.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


def finite_mean(values: torch.Tensor) -> float:
    """Mean over the finite entries (e.g. PSNR of unchanged samples is inf); nan if none."""
    v = values[torch.isfinite(values)]
    return v.mean().item() if v.numel() else math.nan


def sample_quality(x: torch.Tensor, sources: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB, finite values only) and mean SSIM of query samples against their sources."""
    return {"psnr_db": finite_mean(psnr(x, sources)), "ssim": ssim(x, sources).mean().item()}
