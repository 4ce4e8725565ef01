"""Polynomial denoisers: a linear readout of degree-p features of y, one readout per level.

Features are either all monomials of degree <= p (``features=exact``, for low dimension) or
random-projection power features [1, y, (W y)^p] (``features=random``, for images; the paper
uses 1024 random features of a single power p).

Closed form: per level, the ridge regression of x0 on phi(y). For exact monomials the
expectation over the Gaussian noise is taken exactly: with y = a x + s e (a = sqrt(1 - t),
s = sqrt(t)), E_e[y^gamma] = prod_j E[(a x_j + s e)^gamma_j] and
E[(a x + s e)^m] = sum_{even i <= m} C(m, i) (a x)^(m - i) s^i (i - 1)!!, so the normal
equations only involve data moments up to order 2p (the Gram matrix) and p + 1 (the cross
term). For random features the expectation is a Monte Carlo average over ``noise_draws``.

SGD: one readout per level (or one blind readout) trained on whitened features
(:mod:`.whitened`), which converges without tuning to the same optimum.
"""

import math

import torch
from torch import Tensor, nn

from lightning_diff.denoisers.closed_form import ClosedFormDenoiser
from lightning_diff.denoisers.conditioning import wrap
from lightning_diff.denoisers.contract import Denoiser, check_choice
from lightning_diff.denoisers.features import (
    monomial_exponents,
    monomials,
    num_monomials,
    power_features,
    random_projection,
)
from lightning_diff.denoisers.registry import family
from lightning_diff.denoisers.ridge import ridge_solve
from lightning_diff.denoisers.whitened import WhitenedReadout, WhitenedSGD
from lightning_diff.diffusion.grids import NoiseGrid, level_index
from lightning_diff.diffusion.process import add_noise
from lightning_diff.errors import UserError
from lightning_diff.seeding import generator

FEATURE_KINDS = ("exact", "random")
MAX_EXACT_FEATURES = 20_000


class PolynomialFeatures(nn.Module):
    """phi(y) for flattened y: exact monomials or random power features."""

    def __init__(self, dim: int, degree: int, kind: str, num_random: int, seed: int, noise_draws: int = 8) -> None:
        super().__init__()
        if degree < 1:
            raise UserError(f"denoiser.degree={degree} must be >= 1")
        if kind not in FEATURE_KINDS:
            raise UserError(f"denoiser.features={kind!r} is not valid; choose one of {', '.join(FEATURE_KINDS)}")
        self.kind = kind
        self.degree = degree
        if kind == "exact":
            count = num_monomials(dim, degree)
            if count > MAX_EXACT_FEATURES:
                raise UserError(
                    f"exact monomial features of degree {degree} in dimension {dim} number {count:,}; "
                    "use denoiser.features=random for high-dimensional data"
                )
            self.register_buffer("exponents", monomial_exponents(dim, degree))
            self.num_features = count
        else:
            if num_random < 1:
                raise UserError(f"denoiser.num_features={num_random} must be >= 1")
            self.register_buffer("projection", random_projection(num_random, dim, seed))
            self.num_features = 1 + dim + num_random
        self.seed = seed
        self.noise_draws = noise_draws

    def forward(self, flat: Tensor) -> Tensor:
        if self.kind == "exact":
            return monomials(flat, self.exponents)
        return power_features(flat, self.projection, self.degree)

    def second_moment(self, x0: Tensor, t: float) -> Tensor:
        """E[phi phi^T] at noise variance t over the training set ``x0`` (N, dim), float64: exact
        for monomials, a Monte Carlo average over ``noise_draws`` draws for random features."""
        if self.kind == "exact":
            return exact_normal_equations(x0, self.exponents, t)[0]
        phi = self(noisy_copies(x0.float(), t, self.noise_draws, generator(self.seed, 0x3A7E, device=x0.device))).double()
        return phi.T @ phi / phi.shape[0]


def noisy_copies(flat: Tensor, t: float, draws: int, gen: torch.Generator) -> Tensor:
    """``draws`` noisy copies a x + sqrt(t) e of every row of ``flat``, stacked (draws * N, dim)."""
    clean = flat.repeat(draws, 1)
    eps = torch.randn(clean.shape, generator=gen, device=flat.device, dtype=flat.dtype)
    return add_noise(clean, torch.full((clean.shape[0],), t, device=flat.device), eps)


def _gaussian_moments(max_order: int) -> list[float]:
    """E[e^i] for e ~ N(0, 1), i = 0..max_order: (i - 1)!! for even i, 0 for odd i."""
    return [0.0 if i % 2 else float(math.prod(range(i - 1, 0, -2))) for i in range(max_order + 1)]


def _expected_powers(x: Tensor, a: float, s: float, max_order: int) -> Tensor:
    """E_e[(a x + s e)^m] for every entry of x and m = 0..max_order, shape (*x.shape, m + 1)."""
    moments = _gaussian_moments(max_order)
    ax = a * x
    columns = []
    for m in range(max_order + 1):
        total = torch.zeros_like(x)
        for i in range(0, m + 1, 2):
            total = total + math.comb(m, i) * s**i * moments[i] * ax ** (m - i)
        columns.append(total)
    return torch.stack(columns, dim=-1)


def exact_normal_equations(x: Tensor, exponents: Tensor, t: float, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """E[phi phi^T] (F, F) and E[phi x^T] (F, D) under the data x and exact Gaussian noise at t."""
    x = x.double()
    exps = exponents.to(x.device)
    pair = exps[:, None, :] + exps[None, :, :]  # (F, F, D)
    degree = int(exps.sum(dim=1).max())
    a, s = math.sqrt(1.0 - t), math.sqrt(t)
    f, d = exps.shape
    gram = torch.zeros(f, f, dtype=torch.float64, device=x.device)
    cross = torch.zeros(f, d, dtype=torch.float64, device=x.device)
    coords = torch.arange(d, device=x.device)
    for start in range(0, x.shape[0], chunk):
        xc = x[start : start + chunk]
        table = _expected_powers(xc, a, s, 2 * degree)  # (n, D, 2p + 1)
        gram += table[:, coords, pair].prod(dim=-1).sum(dim=0)
        single = table[:, coords, exps].prod(dim=-1)  # (n, F)
        cross += single.T @ xc
    return gram / x.shape[0], cross / x.shape[0]


def _apply(phi: Tensor, readouts: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``phi`` times the readout of their level, grouped by level."""
    first = int(idx[0])
    if bool((idx == first).all()):
        return phi @ readouts[first]
    out = phi.new_empty(phi.shape[0], readouts.shape[-1])
    for k in torch.unique(idx).tolist():
        rows = (idx == k).nonzero(as_tuple=True)[0]
        out[rows] = phi[rows] @ readouts[k]
    return out


class PolynomialRidge(ClosedFormDenoiser):
    """Per-level ridge readouts of the features, fitted from the training set."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        grid: NoiseGrid,
        features: PolynomialFeatures,
        ridge: float,
        noise_draws: int,
        seed: int,
    ) -> None:
        super().__init__()
        dim = int(math.prod(data_shape))
        self.data_shape = tuple(data_shape)
        self.features = features
        self.ridge = ridge
        self.noise_draws = noise_draws
        self.seed = seed
        self.register_buffer("levels", grid.levels.clone().float())
        self.register_buffer("readout", torch.zeros(len(grid), features.num_features, dim))

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        phi = self.features(y.reshape(y.shape[0], -1).float())
        return _apply(phi, self.readout, level_index(self.levels, t)).reshape(y.shape).to(y.dtype)

    def _fit(self, x0: Tensor) -> None:
        flat = x0.reshape(x0.shape[0], -1).float().to(self.readout.device)
        for k, t in enumerate(self.levels.tolist()):
            if self.features.kind == "exact":
                gram, cross = exact_normal_equations(flat, self.features.exponents, t)
                lam = self.ridge * gram.diagonal().mean()
                eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
                self.readout[k] = torch.linalg.solve(gram + lam * eye, cross).float()
            else:
                noisy = noisy_copies(flat, t, self.noise_draws, generator(self.seed, k, device=flat.device))
                self.readout[k] = ridge_solve(self.features(noisy), flat.repeat(self.noise_draws, 1), self.ridge)


@family("polynomial")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "closed_form",
    conditioning: str = "per_level",
    degree: int = 2,
    features: str = "exact",
    num_features: int = 1024,
    ridge: float = 1e-8,
    noise_draws: int = 8,
    seed: int = 0,
    stacked: bool | str = "auto",
) -> Denoiser:
    """Polynomial denoiser of ``degree`` with exact or random features."""
    dim = int(math.prod(data_shape))

    def make_features() -> PolynomialFeatures:
        return PolynomialFeatures(dim, degree, features, num_features, seed, noise_draws)

    if fit == "closed_form":
        check_choice("conditioning", conditioning, ("per_level",), "polynomial with fit=closed_form (one readout per level)")
        return PolynomialRidge(data_shape, grid, make_features(), ridge, noise_draws, seed)
    if fit == "sgd":
        inner = wrap(
            conditioning, grid, lambda: WhitenedReadout(make_features(), data_shape), family="polynomial", stacked=stacked
        )
        return WhitenedSGD(inner, grid)
    raise UserError(f"denoiser.fit={fit!r} is not valid for polynomial; choose closed_form or sgd")
