"""Karras et al.'s (2022) preconditioning of a network that denoises, written for this
package's variance-preserving noise y = sqrt(1 - t) x0 + sqrt(t) eps (the scalings are in
:mod:`lightning_diff.diffusion.edm`).

With a = sqrt(1 - t), b = sqrt(t) and a per-pixel data variance s^2 (``sigma_data`` = s):

    D(y, t) = c_skip y + c_out F(c_in y),  c_in = 1 / sqrt(a^2 s^2 + b^2),
    c_skip = a s^2 / (a^2 s^2 + b^2),      c_out = s b / sqrt(a^2 s^2 + b^2).

c_in gives the network inputs of unit variance; c_skip y is the best linear estimate of x0
from y for data of variance s^2, so F's target (x0 - c_skip y) / c_out has unit variance at
every level (docs/architecture.md derives the three). At low noise D starts as the identity and
F learns a small correction; at high noise c_skip -> 0 and F predicts x0 itself. Without it a
per-level network at t = 0.001 must learn the identity from scratch: the CPU study's paper
UNet was still worse than returning y after 2,400 steps (docs/results.md).

``residual`` is the noise-level-free alternative, D(y) = y + F(y) (:class:`Residual`), the
only one a blind denoiser can take. The wrappers keep the networks' own modes: :class:`LevelPreconditioned` fixes one level's
coefficients as buffers (so K of them stack like the bare networks), :class:`TimePreconditioned`
computes them from each sample's t for a conditioned network ``F(y, t)``.
"""

import torch
from torch import Tensor, nn

from lightning_diff.diffusion.edm import coefficients

PRECONDITIONINGS = ("none", "edm", "residual")


class LevelPreconditioned(nn.Module):
    """``net(y)`` preconditioned for the one noise level ``t`` it denoises."""

    def __init__(self, net: nn.Module, t: float, sigma_data: float) -> None:
        super().__init__()
        self.net = net
        c_in, c_skip, c_out = coefficients(torch.tensor(t, dtype=torch.float64), sigma_data)
        self.register_buffer("c_in", c_in.float())
        self.register_buffer("c_skip", c_skip.float())
        self.register_buffer("c_out", c_out.float())

    def forward(self, y: Tensor) -> Tensor:
        return self.c_skip * y + self.c_out * self.net(self.c_in * y)


class TimePreconditioned(nn.Module):
    """A conditioned ``net(y, t)`` preconditioned at each sample's ``t``."""

    def __init__(self, net: nn.Module, sigma_data: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (y.dim() - 1)
        c_in, c_skip, c_out = (c.reshape(shape).to(y.dtype) for c in coefficients(t.double(), self.sigma_data))
        return c_skip * y + c_out * self.net(c_in * y, t)


class Residual(nn.Module):
    """``y + net(y, ...)``: the network predicts the correction to its input (Kadkhodaie et al.'s
    networks predict the noise and subtract it). It needs no noise level, so a blind denoiser can
    use it: at low noise D starts as the identity."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, y: Tensor, *t: Tensor) -> Tensor:
        return y + self.net(y, *t)
