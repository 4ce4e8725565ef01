"""SGD for the convex families (linear, polynomial) on whitened features: converged without tuning.

Such a denoiser is a readout of fixed features, ``x0_hat = phi(y) R`` (linear: phi(y) = [1, y]).
Its loss E||phi(y) R - x0||^2 is quadratic in R with Hessian G = E[phi phi^T] (per output
coordinate), the features' second moment at the levels the readout serves. On image-like data
G spans decades (data eigenvalues from 4 to 1e-3 plus the noise variance t): a step size stable
for the largest direction leaves the smallest unconverged after thousands of steps, and one
fast enough for the smallest diverges. Writing R = L^-T R' with G = L L^T (Cholesky) gives a
Hessian in R' of exactly the identity, so every direction converges at the same rate, with
the same function class (L is invertible). G is computed from the training set when the
denoiser is fitted (``fit_data``, in the training module's ``setup``): at the readout's own
level (per_level) or averaged over the grid's levels (blind, which sees them all in equal
shares). Derivation: docs/theory.md, "SGD of the convex families".
"""

from typing import Protocol

import torch
from torch import Tensor, nn

from lightning_diff.denoisers.contract import Denoiser
from lightning_diff.diffusion.grids import NoiseGrid

# Relative jitter on G's diagonal before the Cholesky factorisation: exact feature moments at
# t = 1e-3 can be singular to rounding (a constant and a feature that is nearly constant).
CHOLESKY_JITTER = 1e-10


class Features(Protocol):
    """Fixed features phi of flattened inputs, and their second moment under the training noise."""

    num_features: int

    def __call__(self, flat: Tensor) -> Tensor: ...

    def second_moment(self, x0: Tensor, t: float) -> Tensor:
        """E[phi(a x0 + sqrt(t) e) phi(...)^T] over the training set and the noise, (F, F), float64."""
        ...


class WhitenedReadout(nn.Module):
    """``net(y) = phi(y) W R`` with W = L^-T fixed at fit time and R trained (zero at the start).

    ``rank=k`` factors R through k dimensions (``phi W A B + b``, the linear bottleneck): A starts
    random, B and the free bias b at zero; the bias is outside the rank, as in the closed form.
    """

    def __init__(self, features: nn.Module, data_shape: tuple[int, ...], rank: int | None = None) -> None:
        super().__init__()
        self.features = features
        count, dim = int(features.num_features), int(torch.tensor(data_shape).prod())
        self.register_buffer("whitener", torch.eye(count))
        if rank is None:
            self.readout = nn.Parameter(torch.zeros(count, dim))
        else:
            self.down = nn.Parameter(torch.randn(count, rank) / count**0.5)
            self.up = nn.Parameter(torch.zeros(rank, dim))
            self.bias = nn.Parameter(torch.zeros(dim))
        self.rank = rank

    def forward(self, y: Tensor) -> Tensor:
        whitened = self.features(y.reshape(y.shape[0], -1).float()) @ self.whitener
        if self.rank is None:
            out = whitened @ self.readout
        else:
            out = (whitened @ self.down) @ self.up + self.bias
        return out.reshape(y.shape).to(y.dtype)

    @torch.no_grad()
    def whiten(self, x0: Tensor, levels: list[float]) -> None:
        """Set W from the features' second moment on ``x0`` averaged over ``levels``."""
        gram = sum(self.features.second_moment(x0, t) for t in levels) / len(levels)
        gram = gram + CHOLESKY_JITTER * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        lower = torch.linalg.cholesky(gram)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        self.whitener.copy_(torch.linalg.solve_triangular(lower, eye, upper=False).T)


class WhitenedSGD(Denoiser):
    """A per-level or blind denoiser of :class:`WhitenedReadout` networks, whitened by ``fit_data``.

    Fitting only sets the preconditioner; the readouts are then trained by the optimizer.
    """

    fit = "sgd"

    def __init__(self, inner: Denoiser, grid: NoiseGrid) -> None:
        super().__init__()
        self.inner = inner
        self.conditioning = inner.conditioning
        self.accepts_any_t = inner.accepts_any_t
        self.register_buffer("levels", grid.levels.clone().float())
        # An integer, not a bool: the EMA averages every buffer, and integers by a formula that
        # keeps a constant 1 at 1.
        self.register_buffer("whitened", torch.zeros((), dtype=torch.long))

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return self.inner(y, t)

    def network_at(self, t: float) -> nn.Module:
        return self.inner.network_at(t)

    @property
    def needs_fitting(self) -> bool:
        return not bool(self.whitened)

    def fit_data(self, x0: Tensor) -> None:
        """Whiten each readout for the levels it serves (one per_level, all of them blind)."""
        served: dict[int, tuple[WhitenedReadout, list[float]]] = {}
        for t in self.levels.tolist():
            net = self.inner.network_at(t)
            served.setdefault(id(net), (net, []))[1].append(t)
        flat = x0.reshape(x0.shape[0], -1).double()
        for net, levels in served.values():
            net.whiten(flat, levels)
        self.whitened.fill_(1)
