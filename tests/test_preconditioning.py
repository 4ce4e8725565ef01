"""EDM preconditioning (lightning_diff/diffusion/edm.py, lightning_diff/denoisers/preconditioning.py)
in this package's variance-preserving noise: the three coefficients do what their derivation
says, and the per-level and conditioned wrappers compute D = c_skip y + c_out F(c_in y)."""

import pytest
import torch
from torch import nn

from lightning_diff.denoisers.conditioning import wrap
from lightning_diff.denoisers.unet import build
from lightning_diff.diffusion.edm import coefficients
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError

GRID = NoiseGrid(torch.linspace(0.001, 0.999, 10))


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
@pytest.mark.parametrize("t", [0.001, 0.1, 0.5, 0.9, 0.999])
def test_c_in_whitens_y_c_skip_is_the_best_linear_estimate_and_c_out_the_residual_scale(t, sigma_data):
    gen = torch.Generator().manual_seed(0)
    x0 = sigma_data * torch.randn(400_000, generator=gen, dtype=torch.float64)
    y = (1 - t) ** 0.5 * x0 + t**0.5 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    c_in, c_skip, c_out = coefficients(torch.tensor(t, dtype=torch.float64), sigma_data)
    assert (c_in * y).std().item() == pytest.approx(1.0, rel=0.01)
    regression = (x0 * y).mean() / (y * y).mean()  # least squares x0 ~ c y
    assert c_skip.item() == pytest.approx(regression.item(), rel=0.01, abs=1e-3)
    target = (x0 - c_skip * y) / c_out  # what F is trained to output
    assert target.std().item() == pytest.approx(1.0, rel=0.01)


class Scaled(nn.Module):
    """F(y) = w * y: a network whose output the test can write down."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7))

    def forward(self, y, t=None):
        return self.w * y


def test_each_level_network_and_the_conditioned_network_are_wrapped_as_the_formula_says():
    y = torch.randn(20, 1, 4, 4)
    t = GRID.levels.repeat(2)
    c_in, c_skip, c_out = (c.reshape(-1, 1, 1, 1).float() for c in coefficients(t.double(), 0.5))
    expected = c_skip * y + c_out * 0.7 * c_in * y
    for stacked in (False, True):
        per_level = wrap("per_level", GRID, Scaled, family="test", stacked=stacked, preconditioning="edm")
        assert torch.allclose(per_level(y, t), expected, atol=1e-6)
    conditioned = wrap("conditioned", GRID, Scaled, Scaled, family="test", preconditioning="edm")
    assert torch.allclose(conditioned(y, t), expected, atol=1e-6)
    plain = wrap("per_level", GRID, Scaled, family="test")
    assert torch.allclose(plain(y, t), 0.7 * y)
    for conditioning in ("per_level", "blind", "conditioned"):
        residual = wrap(conditioning, GRID, Scaled, Scaled, family="test", preconditioning="residual")
        assert torch.allclose(residual(y, t), 1.7 * y)


def test_a_preconditioned_unet_starts_near_the_identity_at_low_noise_and_stays_bias_free():
    torch.manual_seed(0)
    y = torch.randn(8, 1, 16, 16)
    t = torch.full((8,), 0.001)
    plain = build((1, 16, 16), GRID, base_channels=4, norm="bias_free_batch").eval()
    edm = build((1, 16, 16), GRID, base_channels=4, norm="bias_free_batch", preconditioning="edm").eval()
    identity = y / (1 - 0.001) ** 0.5
    assert (edm(y, t) - identity).pow(2).mean() < 0.01 * (plain(y, t) - identity).pow(2).mean()
    assert torch.allclose(edm(3.0 * y, t), 3.0 * edm(y, t), atol=1e-5)  # c_skip y + c_out F(c_in y) keeps D(ay) = aD(y)


def test_bad_preconditioning_settings_are_one_clear_error():
    with pytest.raises(UserError, match="denoiser.preconditioning='karras' is not valid; choose one of none, edm, residual"):
        build((1, 16, 16), GRID, base_channels=4, preconditioning="karras")
    with pytest.raises(UserError, match="a blind denoiser never sees"):
        build((1, 16, 16), GRID, base_channels=4, conditioning="blind", preconditioning="edm")
    with pytest.raises(UserError, match="denoiser.sigma_data=0 is not valid"):
        build((1, 16, 16), GRID, base_channels=4, preconditioning="edm", sigma_data=0)
