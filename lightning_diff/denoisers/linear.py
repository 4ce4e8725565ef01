"""Affine denoisers, full rank or rank k, fitted in closed form or by SGD.

Closed form (Wiener filter): for data with mean mu and covariance U diag(lam) U^T and
y = a x0 + sqrt(t) eps (a = sqrt(1 - t)), the MMSE affine denoiser is
    x0_hat = mu + U diag(g) U^T (y - a mu),   g_j = a lam_j / (a^2 lam_j + t).
Each direction's error reduction a^2 lam_j^2 / (a^2 lam_j + t) grows with lam_j, so the best
rank-k affine denoiser keeps the top-k principal directions (the linear bottleneck). The
eigendecomposition is computed once at fit time and the denoiser works at any t.

SGD: one affine map per level (or one blind map), full rank or factored through k dimensions,
trained with the shared objective on whitened inputs (:mod:`.whitened`, which makes it
converge without tuning); same function class as the closed form.
"""

import torch
from torch import Tensor, nn

from lightning_diff.denoisers.closed_form import ClosedFormDenoiser
from lightning_diff.denoisers.conditioning import wrap
from lightning_diff.denoisers.contract import Denoiser, check_choice
from lightning_diff.denoisers.registry import family
from lightning_diff.denoisers.whitened import WhitenedReadout, WhitenedSGD
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError


def _dimension(data_shape: tuple[int, ...]) -> int:
    return int(torch.tensor(data_shape).prod())


def check_rank(rank: int | None, dim: int) -> None:
    """A rank must lie in 1..dim."""
    if rank is not None and not 1 <= rank <= dim:
        raise UserError(f"denoiser.rank={rank} is invalid for data of dimension {dim}; use 1..{dim} or null (full rank)")


class WienerDenoiser(ClosedFormDenoiser):
    """The optimal affine (rank-k) denoiser from the training mean and covariance, for any t."""

    accepts_any_t = True

    def __init__(self, data_shape: tuple[int, ...], rank: int | None = None) -> None:
        super().__init__()
        dim = _dimension(data_shape)
        check_rank(rank, dim)
        self.rank = rank or dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("eigvecs", torch.zeros(dim, self.rank))
        self.register_buffer("eigvals", torch.zeros(self.rank))

    def _fit(self, x0: Tensor) -> None:
        flat = x0.reshape(x0.shape[0], -1).double()
        mean = flat.mean(dim=0)
        centred = flat - mean
        cov = centred.T @ centred / flat.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(cov)
        order = torch.argsort(eigvals, descending=True)[: self.rank]
        self.mean.copy_(mean.float())
        self.eigvals.copy_(eigvals[order].clamp_min(0).float())
        self.eigvecs.copy_(eigvecs[:, order].float())

    def gains(self, t: Tensor) -> Tensor:
        """Per-direction gains g_j(t) = a lam_j / (a^2 lam_j + t), shape (B, rank)."""
        t = t.float().reshape(-1, 1)
        a = torch.sqrt(1.0 - t)
        return a * self.eigvals / (a.pow(2) * self.eigvals + t)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        flat = y.reshape(y.shape[0], -1).float()
        a = torch.sqrt(1.0 - t.float()).reshape(-1, 1)
        coords = (flat - a * self.mean) @ self.eigvecs
        return (self.mean + (coords * self.gains(t)) @ self.eigvecs.T).reshape(y.shape).to(y.dtype)


class AffineFeatures(nn.Module):
    """phi(y) = [1, y]: the linear family as a readout of features (:mod:`.whitened`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim + 1

    def forward(self, flat: Tensor) -> Tensor:
        return torch.cat([torch.ones_like(flat[:, :1]), flat], dim=1)

    def second_moment(self, x0: Tensor, t: float) -> Tensor:
        """Exact E[phi phi^T] for y = a x0 + sqrt(t) e: [[1, a mu^T], [a mu, a^2 E[x x^T] + t I]]."""
        x = x0.double()
        a = (1.0 - t) ** 0.5
        mean = a * x.mean(dim=0)
        inner = a * a * (x.T @ x) / x.shape[0] + t * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        top = torch.cat([torch.ones(1, 1, dtype=x.dtype, device=x.device), mean[None, :]], dim=1)
        return torch.cat([top, torch.cat([mean[:, None], inner], dim=1)], dim=0)


@family("linear")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "closed_form",
    conditioning: str = "per_level",
    rank: int | None = None,
    stacked: bool | str = "auto",
) -> Denoiser:
    """Closed-form Wiener denoiser (any t) or SGD-trainable affine maps per level."""
    if fit == "closed_form":
        check_choice("conditioning", conditioning, ("per_level",), "linear with fit=closed_form (optimal at every level)")
        return WienerDenoiser(data_shape, rank)
    if fit == "sgd":
        dim = _dimension(data_shape)
        check_rank(rank, dim)
        inner = wrap(
            conditioning, grid, lambda: WhitenedReadout(AffineFeatures(dim), data_shape, rank), family="linear", stacked=stacked
        )
        return WhitenedSGD(inner, grid)
    raise UserError(f"denoiser.fit={fit!r} is not valid for linear; choose closed_form or sgd")
