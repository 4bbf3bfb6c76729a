import math

import torch

from nnmark.metrics import change_rate, psnr, sample_quality, ssim


def test_change_rate():
    assert change_rate(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5


def test_psnr_closed_form():
    ref = torch.zeros(2, 1, 8, 8)
    x = ref.clone()
    x[0] += 0.1  # mse 0.01 -> 20 dB
    p = psnr(x, ref)
    assert math.isclose(p[0].item(), 20.0, rel_tol=1e-7)
    assert math.isinf(p[1].item())
    assert math.isclose(sample_quality(x, ref)["psnr_db"], 20.0, rel_tol=1e-7)


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.2, 0.6
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert math.isclose(ssim(x, y).item(), expected, rel_tol=1e-6)


def test_ssim_identity_symmetry_and_noise_order():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=gen)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    small = (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    large = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    assert torch.allclose(ssim(small, x), ssim(x, small))
    assert (ssim(large, x) < ssim(small, x)).all()
    assert (ssim(small, x) < 1).all()


def test_ssim_on_images_smaller_than_the_window():
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
