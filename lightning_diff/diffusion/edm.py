"""Karras et al.'s (2022) scalings for this package's variance-preserving noise
y = sqrt(1 - t) x0 + sqrt(t) eps and data of per-pixel standard deviation s (``sigma_data``):

    c_in = 1 / sqrt((1 - t) s^2 + t),  c_skip = sqrt(1 - t) s^2 / ((1 - t) s^2 + t),
    c_out = s sqrt(t) / sqrt((1 - t) s^2 + t).

They live in the diffusion layer because two layers read them: the denoisers' preconditioning
wraps a network as c_skip y + c_out F(c_in y), and the objective's ``level_weights=edm`` weighs
each level by 1 / c_out^2 (docs/architecture.md "Preconditioning" derives both).
"""

import math

from torch import Tensor

from lightning_diff.errors import UserError


def check_sigma_data(sigma_data: float) -> None:
    """Refuse a data standard deviation the scalings cannot use (not a positive finite number)."""
    number = isinstance(sigma_data, (int, float)) and not isinstance(sigma_data, bool)
    if not number or not math.isfinite(sigma_data) or sigma_data <= 0:
        raise UserError(
            f"denoiser.sigma_data={sigma_data!r} is not valid; it must be a positive number (0.5 for images in [-1, 1])"
        )


def coefficients(t: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """(c_in, c_skip, c_out) at noise variances ``t``, shaped like ``t``."""
    data_variance = sigma_data**2
    total = (1.0 - t) * data_variance + t  # Var(y) per pixel
    c_in = total.rsqrt()
    c_skip = (1.0 - t).sqrt() * data_variance / total
    c_out = sigma_data * t.sqrt() * c_in
    return c_in, c_skip, c_out


def loss_weight(t: Tensor, sigma_data: float) -> Tensor:
    """1 / c_out(t)^2 = (1 - t) / t + 1 / s^2: the x0 MSE divided by what the best linear
    denoiser of variance-s^2 data leaves at ``t``."""
    return (1.0 - t) / t + 1.0 / sigma_data**2
