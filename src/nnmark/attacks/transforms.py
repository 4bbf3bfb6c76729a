"""Input transforms (input -> input): the "input modification" attacks of MetaFinger sec. 5.1.

Paper: Yang et al., "MetaFinger" (IJCAI 2022), sec. 5.1 "Input Modification" and 5.3: a suspect
may preprocess every query before its model sees it, as an adversarial defence or to wash out a
fingerprint: random resize and padding (Xie et al. 2018, "Mitigating adversarial effects through
randomization"), input noising (Gaussian and universal noise) and input smoothing (mean, median and
Gaussian kernels, Xu et al. 2018, "Feature squeezing").

Every transform is a callable ``t(x)``: x (N, C, H, W) floating point in [0, 1] (else ``InputError``)
-> a new tensor of the same shape and dtype in [0, 1]; one batched operation for the whole batch.
A random transform owns a ``torch.Generator`` seeded at construction: successive calls draw fresh
randomness (as a deployed preprocessing would), and two transforms built with the same seed give the
same sequence of outputs. Defaults follow the MetaFinger release (noise 0.05, 3x3 kernels, Gaussian
sigma 0.8). Each class registers in ``nnmark.attacks.TRANSFORMS`` (``registry.register_transform``): a name
mapped to its constructor, all of whose arguments have defaults.

Example::

    t = TRANSFORMS["median_smoothing"](k=3)
    y = t(x)          # same shape, in [0, 1]
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F

from nnmark.attacks.registry import TRANSFORMS, register_transform
from nnmark.errors import ArgumentError, InputError
from nnmark.oracles import check_inputs

MAX_SHRINK = 0.25
FILL = 0.0
NOISE = 0.05
KERNEL = 3
SIGMA = 0.8

__all__ = ["TRANSFORMS", "GaussianNoise", "GaussianSmoothing", "MeanSmoothing", "MedianSmoothing", "RandomResizePad",
           "Transform", "UniformNoise", "UniversalNoise"]


class Transform(abc.ABC):
    """Base class: checks the batch (``InputError``), then calls ``_apply``, which each subclass defines."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"transform inputs must be an (N, C, H, W) tensor, got {shape}")
        check_inputs(x, tuple(x.shape[1:]))
        return self._apply(x)

    @abc.abstractmethod
    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        """The transform of a checked batch: same shape and dtype, values in [0, 1]."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class _Seeded(Transform):
    """A transform that draws from its own generator, seeded once at construction."""

    def __init__(self, seed: int):
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)


def _check_nonnegative(name: str, value: float) -> None:
    if not value >= 0 or not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number >= 0, got {value}")


def _check_kernel(k: int) -> None:
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ArgumentError(f"kernel size k must be an odd integer >= 1, got {k!r}")


@register_transform("resize_pad", summary="Random resize and padding (Xie et al. 2018), back to the input size.")
class RandomResizePad(_Seeded):
    """Random resize and padding (Xie et al. 2018), back to the input size.

    Each image is shrunk (bilinear, ``align_corners=False``) to h' x w' with h' drawn uniformly from
    the integers in [ceil(H (1 - max_shrink)), H] and w' = round(W h' / H), then placed at a uniform
    random offset on an H x W canvas of ``fill``. Xie et al. enlarge (299 -> 331) and pad to a bigger
    canvas; nnmark keeps the size the model expects, so it shrinks instead (the MetaFinger release
    draws 24..40 pixels for 32-pixel CIFAR images). Each image gets its own size and offset.

    Args:
        max_shrink: in [0, 1), the largest share a side loses (0.25: smallest side 75%; 0 leaves x unchanged).
        seed: seeds the sizes and offsets.
        fill: canvas value in [0, 1] (0: black, as Xie et al. pad with zeros).
    """

    def __init__(self, max_shrink: float = MAX_SHRINK, seed: int = 0, fill: float = FILL):
        if not 0 <= max_shrink < 1:
            raise ArgumentError(f"max_shrink must lie in [0, 1), got {max_shrink}")
        if not 0 <= fill <= 1:
            raise ArgumentError(f"fill must lie in [0, 1], got {fill}")
        super().__init__(seed)
        self.max_shrink = max_shrink
        self.fill = fill

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        lo = max(1, math.ceil(h * (1 - self.max_shrink) - 1e-9))
        hs = torch.randint(lo, h + 1, (n,), generator=self._gen)
        ws = (w * hs / h).round().clamp(1, w).long()
        top = (torch.rand(n, generator=self._gen) * (h - hs + 1)).long()
        left = (torch.rand(n, generator=self._gen) * (w - ws + 1)).long()
        rows = _source_coords(h, hs, top)  # (n, H): source row of each output row, NaN outside
        cols = _source_coords(w, ws, left)
        grid = torch.stack(
            [
                ((2 * cols + 1) / w - 1)[:, None, :].expand(n, h, w),
                ((2 * rows + 1) / h - 1)[:, :, None].expand(n, h, w),
            ],
            dim=-1,
        )
        inside = ~(grid.isnan().any(dim=-1))  # (n, H, W)
        # sampled in float64, so that a full-size image (max_shrink 0) comes back unchanged to float32 precision
        out = F.grid_sample(x.double(), grid.nan_to_num(0.0), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return torch.where(inside[:, None], out, self.fill).clamp_(0, 1).to(x.dtype)


def _source_coords(size: int, new: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """For each image, the source pixel coordinate of every output pixel along one axis (NaN on the padding).

    An output pixel i inside the resized image (offset <= i < offset + new) samples the source at
    (i - offset + 0.5) * size / new - 0.5, the ``align_corners=False`` resize rule.
    """
    i = torch.arange(size, dtype=torch.float64)[None, :]
    new, offset = new[:, None].double(), offset[:, None].double()
    src = (i - offset + 0.5) * size / new - 0.5
    return torch.where((i >= offset) & (i < offset + new), src, torch.full_like(src, float("nan")))


@register_transform("gaussian_noise", summary="Gaussian noise on every pixel, clipped to [0, 1].")
class GaussianNoise(_Seeded):
    """x + N(0, std^2), i.i.d. per pixel and per image, clipped to [0, 1] (Dziugaite et al. 2016).

    Args:
        std: the noise's standard deviation, >= 0 (0 leaves x unchanged).
        seed: seeds the noise.
    """

    def __init__(self, std: float = NOISE, seed: int = 0):
        _check_nonnegative("std", std)
        super().__init__(seed)
        self.std = std

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self._gen, dtype=x.dtype)
        return (x + self.std * noise).clamp_(0, 1)


@register_transform("uniform_noise", summary="Uniform noise on every pixel, clipped to [0, 1].")
class UniformNoise(_Seeded):
    """x + U(-eps, eps), i.i.d. per pixel and per image, clipped to [0, 1].

    Args:
        eps: the noise's bound, >= 0 (0 leaves x unchanged).
        seed: seeds the noise.
    """

    def __init__(self, eps: float = NOISE, seed: int = 0):
        _check_nonnegative("eps", eps)
        super().__init__(seed)
        self.eps = eps

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=self._gen, dtype=x.dtype) * 2 - 1
        return (x + self.eps * noise).clamp_(0, 1)


@register_transform("universal_noise", summary="One fixed uniform noise pattern added to every input.")
class UniversalNoise(Transform):
    """x + u, one fixed pattern u ~ U(-eps, eps)^(C x H x W) for every input and every call, clipped to [0, 1].

    u is a pure function of ``seed`` and the input's (C, H, W), drawn afresh from a generator seeded
    with ``seed`` on each call, so the pattern never changes.

    Args:
        eps: the pattern's bound, >= 0 (0 leaves x unchanged).
        seed: seeds the pattern.
    """

    def __init__(self, eps: float = NOISE, seed: int = 0):
        _check_nonnegative("eps", eps)
        self.eps = eps
        self.seed = seed

    def pattern(self, shape: tuple[int, int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The fixed noise u (C, H, W) added to every input of that shape."""
        gen = torch.Generator().manual_seed(self.seed)
        return (torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1) * self.eps

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.pattern(tuple(x.shape[1:]), x.dtype)).clamp_(0, 1)


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of x with the (k, k) ``kernel`` (sum 1), reflect-padded to the same size."""
    k = kernel.shape[-1]
    if k == 1:
        return x.clone()
    c = x.shape[1]
    padded = _reflect(x, k)
    weight = kernel.to(x.dtype).expand(c, 1, k, k)
    return F.conv2d(padded, weight, groups=c).clamp_(0, 1)


def _reflect(x: torch.Tensor, k: int) -> torch.Tensor:
    r = k // 2
    if r >= min(x.shape[-2:]):
        raise ArgumentError(f"kernel size {k} needs images larger than {r} pixels per side, got {tuple(x.shape[-2:])}")
    return F.pad(x, (r, r, r, r), mode="reflect")


@register_transform("mean_smoothing", summary="Mean (box) filter over k x k neighbourhoods.")
class MeanSmoothing(Transform):
    """Mean (box) filter: each pixel becomes the mean of its k x k neighbourhood (reflect padding, same size).

    Args:
        k: kernel size, odd >= 1 (1 leaves x unchanged).
    """

    def __init__(self, k: int = KERNEL):
        _check_kernel(k)
        self.k = k

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return _depthwise(x, torch.full((self.k, self.k), 1.0 / self.k**2, dtype=torch.float64))


@register_transform("median_smoothing", summary="Median filter over k x k neighbourhoods.")
class MedianSmoothing(Transform):
    """Median filter: each pixel becomes the median of its k x k neighbourhood (reflect padding, same size).

    All neighbourhoods come from one ``unfold``; k is odd, so the median is the middle value.

    Args:
        k: kernel size, odd >= 1 (1 leaves x unchanged).
    """

    def __init__(self, k: int = KERNEL):
        _check_kernel(k)
        self.k = k

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return x.clone()
        n, c, h, w = x.shape
        patches = F.unfold(_reflect(x, self.k), self.k)  # (N, C*k*k, H*W)
        return patches.reshape(n, c, self.k * self.k, h * w).median(dim=2).values.reshape(n, c, h, w)


@register_transform("gaussian_smoothing", summary="Gaussian filter over k x k neighbourhoods.")
class GaussianSmoothing(Transform):
    """Gaussian filter: k x k kernel exp(-(i^2 + j^2) / (2 sigma^2)), normalised to sum 1 (reflect padding, same size).

    Args:
        k: kernel size, odd >= 1 (1 leaves x unchanged).
        sigma: the Gaussian's standard deviation in pixels, > 0.
    """

    def __init__(self, k: int = KERNEL, sigma: float = SIGMA):
        _check_kernel(k)
        if not sigma > 0 or not math.isfinite(sigma):
            raise ArgumentError(f"sigma must be a finite number > 0, got {sigma}")
        self.k = k
        self.sigma = sigma

    def kernel(self) -> torch.Tensor:
        """The normalised (k, k) Gaussian kernel, float64."""
        i = torch.arange(self.k, dtype=torch.float64) - self.k // 2
        g = torch.exp(-(i**2) / (2 * self.sigma**2))
        g2 = g[:, None] * g[None, :]
        return g2 / g2.sum()

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return _depthwise(x, self.kernel())
