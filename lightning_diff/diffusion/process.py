"""The variance-preserving forward process with t = noise variance.

``y_t = sqrt(1 - t) * x0 + sqrt(t) * eps`` with ``eps ~ N(0, I)`` and ``t`` in (0, 1), the
parametrisation of Levine & Weiss (2026). ``sigma = sqrt(t / (1 - t))`` is the equivalent
noise level of the variance-exploding process on ``y / sqrt(1 - t)`` (Karras et al. 2022).
"""

from collections.abc import Callable

import torch
from torch import Tensor

# What the diffusion layer calls a denoiser: any D(y, t) -> x0_hat (a family's Denoiser module,
# or a plain function in tests); it knows no family.
DenoiserFn = Callable[[Tensor, Tensor], Tensor]


def _broadcast(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim()))


def signal_scale(t: Tensor) -> Tensor:
    """sqrt(1 - t): how much of x0 survives at noise variance t."""
    return torch.sqrt(1.0 - t)


def add_noise(x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """y_t for per-sample levels ``t`` of shape (B,) and noise ``eps`` shaped like ``x0``."""
    t = _broadcast(t.to(x0.dtype), x0)
    return torch.sqrt(1.0 - t) * x0 + torch.sqrt(t) * eps


def predicted_noise(y: Tensor, x0_hat: Tensor, t: Tensor) -> Tensor:
    """The noise implied by an x0 prediction: (y - sqrt(1 - t) x0_hat) / sqrt(t)."""
    t = _broadcast(t.to(y.dtype), y)
    return (y - torch.sqrt(1.0 - t) * x0_hat) / torch.sqrt(t)


def t_to_sigma(t: Tensor) -> Tensor:
    """Variance-exploding noise level of the scaled state y / sqrt(1 - t)."""
    return torch.sqrt(t / (1.0 - t))


def sigma_to_t(sigma: Tensor) -> Tensor:
    """Inverse of :func:`t_to_sigma`."""
    return sigma**2 / (1.0 + sigma**2)
