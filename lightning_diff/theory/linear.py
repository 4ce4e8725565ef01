"""What an affine denoiser generates: a Gaussian, exactly, on any finite grid.

For data with mean mu and covariance U diag(lam) U^T, the optimal affine denoiser at noise
variance t acts on each principal direction j on its own,
    <u_j, x0_hat - mu> = g_j(t) <u_j, y - a mu>,   g_j(t) = a lam_j / (a^2 lam_j + t),  a = sqrt(1 - t),
and every sampler step is then an affine map of the state plus (DDPM, DDIM with eta > 0) fresh
Gaussian noise. Starting from y ~ N(0, I), the output in direction j is
    <u_j, x - mu> = A_j c_j + sqrt(S_j) n_j,   c_j = <u_j, y_start - a_start mu> ~ N(-a_start <u_j, mu>, 1),
with a scalar A_j and an added variance S_j given by the recursions of docs/theory.md
(section "Linear"): the generated law is N(mu - a_start U diag(A) U^T mu, U diag(A^2 + S) U^T).
A rank-k denoiser has g_j = 0 beyond the top k directions, so its law lives on mu + span(u_1..u_k).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.samplers import Sampler
from lightning_diff.errors import UserError

EXACT_SAMPLERS = ("ddim", "ddpm", "heun")


def wiener_gain(eigval: float | Tensor, t: float) -> float | Tensor:
    """g(t) = a lam / (a^2 lam + t): the optimal affine denoiser's gain along an eigendirection."""
    a2 = 1.0 - t
    return math.sqrt(a2) * eigval / (a2 * eigval + t)


def _ddim_step(g: Tensor, t: float, t_next: float, eta: float) -> tuple[Tensor, float]:
    # y' = a' x0_hat + sqrt((t' - s2) / t) (y - a x0_hat) + sqrt(s2) n on the centred coordinate,
    # x0_hat = g y, s2 = eta^2 (t'/t)(1 - a^2/a'^2) (samplers.DDIM; eta = 0: no fresh noise).
    fresh = eta**2 * t_next / t * (1 - (1 - t) / (1 - t_next))
    a, a_next, ratio = math.sqrt(1 - t), math.sqrt(1 - t_next), math.sqrt((t_next - fresh) / t)
    return a_next * g + ratio * (1 - a * g), fresh


def _ddpm_step(g: Tensor, t: float, t_next: float) -> tuple[Tensor, float]:
    # The coefficients of samplers.DDPM: y' = c_x x0_hat + c_y y + sqrt(v) n.
    alpha = (1 - t) / (1 - t_next)
    beta = 1 - alpha
    coef_x0 = math.sqrt(1 - t_next) * beta / t
    coef_y = math.sqrt(alpha) * t_next / t
    return coef_x0 * g + coef_y, t_next / t * beta


def _heun_rate(g: Tensor, t: float) -> Tensor:
    # Probability-flow velocity in VE coordinates w = y / a - mu: dw/dsigma = (1 - a g) w / sigma.
    return (1 - math.sqrt(1 - t) * g) / math.sqrt(t / (1 - t))


def sampler_response(eigvals: Tensor, levels: Tensor, sampler: Sampler) -> tuple[Tensor, Tensor]:
    """(A, S) per eigenvalue: output = A * (starting centred coordinate) + N(0, S), exactly.

    ``levels`` is the grid in sampling order (descending). ``eigvals`` may hold zeros (directions
    the denoiser ignores: A = S = 0 there).
    """
    if sampler.name not in EXACT_SAMPLERS:
        raise UserError(
            f"sampler {sampler!r} has no linear-Gaussian prediction; valid: {', '.join(EXACT_SAMPLERS)}"
        )
    lam = eigvals.to(torch.float64)
    ts = [float(t) for t in levels]
    gains = [wiener_gain(lam, t) for t in ts]
    scale = torch.ones_like(lam)
    added = torch.zeros_like(lam)
    if sampler.name == "heun":
        # x = y / a: the VE state starts at c / a_start; the output is a_last g_last w_last.
        scale = scale / math.sqrt(1 - ts[0])
        for k in range(len(ts) - 1):
            t, t_next = ts[k], ts[k + 1]
            h = math.sqrt(t_next / (1 - t_next)) - math.sqrt(t / (1 - t))
            rate, rate_next = _heun_rate(gains[k], t), _heun_rate(gains[k + 1], t_next)
            scale = scale * (1 + 0.5 * h * (rate + rate_next * (1 + h * rate)))
        return math.sqrt(1 - ts[-1]) * gains[-1] * scale, added
    for k in range(len(ts) - 1):
        if sampler.name == "ddim":
            factor, noise_var = _ddim_step(gains[k], ts[k], ts[k + 1], sampler.settings()["eta"])
        else:
            factor, noise_var = _ddpm_step(gains[k], ts[k], ts[k + 1])
        scale = scale * factor
        added = added * factor**2 + noise_var
    return gains[-1] * scale, gains[-1] ** 2 * added


def probability_flow_variance(eigvals: Tensor, t_min: float, t_max: float) -> Tensor:
    """Output variances of the exact probability-flow ODE from t_max down to t_min (no grid error).

    Along a direction the ODE in w = y / a - mu reads dw/dsigma = sigma w / (lam + sigma^2), so
    w scales by sqrt((lam + s_min^2) / (lam + s_max^2)); with Var w_start = 1 / (1 - t_max) and
    the output g a w: lam^2 (1 + s_max^2) / ((lam + s_min^2)(lam + s_max^2)), sigma^2 = t / (1 - t).
    DDIM and Heun converge to it as the grid is refined between the same endpoints.
    """
    lam = eigvals.to(torch.float64)
    s_min, s_max = t_min / (1 - t_min), t_max / (1 - t_max)
    return lam**2 * (1 + s_max) / ((lam + s_min) * (lam + s_max))


@dataclass
class GaussianPrediction:
    """The law a linear denoiser generates: N(mean, eigvecs diag(variances) eigvecs^T).

    ``eigvecs`` (d, d) are the training data's principal directions (columns, by descending
    eigenvalue), ``eigvals`` their training variances (the continuous-limit prediction),
    ``variances`` the exact finite-grid output variances, ``rank`` the directions the denoiser
    keeps (the law is supported on mean + span of the first ``rank`` columns).
    """

    mean: Tensor
    eigvecs: Tensor
    eigvals: Tensor
    variances: Tensor
    rank: int
    sampler: Sampler

    @classmethod
    def from_data(
        cls, train_data: Tensor, grid: NoiseGrid, sampler: Sampler, rank: int | None = None
    ) -> "GaussianPrediction":
        """The prediction for the optimal (rank-``rank``) affine denoiser of ``train_data``."""
        flat = train_data.reshape(train_data.shape[0], -1).to(torch.float64)
        dim = flat.shape[1]
        if rank is not None and not 1 <= rank <= dim:
            raise UserError(f"theory.rank={rank} is invalid for data of dimension {dim}; use 1..{dim} or null")
        keep = rank or dim
        data_mean = flat.mean(dim=0)
        centred = flat - data_mean
        eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / flat.shape[0])
        order = torch.argsort(eigvals, descending=True)
        eigvals, eigvecs = eigvals[order].clamp_min(0), eigvecs[:, order]
        kept = torch.where(torch.arange(dim) < keep, eigvals, torch.zeros_like(eigvals))
        descending = grid.levels.to(torch.float64).flip(0)
        scale, added = sampler_response(kept, descending, sampler)
        a_start = math.sqrt(1 - float(descending[0]))
        # The sampler starts at y ~ N(0, I), whose centred coordinate has mean -a_start <u_j, mu>.
        mean = data_mean - a_start * eigvecs @ (scale * (eigvecs.T @ data_mean))
        return cls(mean, eigvecs, eigvals, scale**2 + added, keep, sampler)

    @property
    def covariance(self) -> Tensor:
        """The predicted covariance, (d, d)."""
        return self.eigvecs @ torch.diag(self.variances) @ self.eigvecs.T

    def measured_variances(self, samples: Tensor) -> Tensor:
        """The samples' variance along each predicted eigendirection, (d,)."""
        flat = samples.reshape(samples.shape[0], -1).to(torch.float64)
        coords = (flat - flat.mean(dim=0)) @ self.eigvecs
        return coords.pow(2).sum(dim=0) / (flat.shape[0] - 1)

    def energy_outside_support(self, samples: Tensor) -> float:
        """Fraction of the samples' energy about the mean that lies outside mean + span(top-rank)."""
        flat = samples.reshape(samples.shape[0], -1).to(torch.float64) - self.mean
        outside = flat @ self.eigvecs[:, self.rank :]
        return float(outside.pow(2).sum() / flat.pow(2).sum().clamp_min(1e-300))
