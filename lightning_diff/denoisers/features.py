"""Polynomial feature maps for the polynomial families.

- exact monomials of degree <= p (all of them, including the constant), for low dimension;
- random-projection power features (w_j . z / sqrt(m))^p for images (the paper uses 1024 of
  a single power p), optionally with the constant and the linear terms so p = 1 and the
  linear family stay inside the class.
"""

import itertools
import math

import torch
from torch import Tensor


def monomial_exponents(dim: int, degree: int) -> Tensor:
    """All exponent vectors alpha in N^dim with |alpha| <= degree, shape (F, dim), graded order."""
    rows = [
        exps
        for total in range(degree + 1)
        for exps in itertools.product(range(total + 1), repeat=dim)
        if sum(exps) == total
    ]
    return torch.tensor(rows, dtype=torch.long)


def num_monomials(dim: int, degree: int) -> int:
    """Number of monomials of degree <= ``degree`` in ``dim`` variables: C(dim + degree, degree)."""
    return math.comb(dim + degree, degree)


def monomials(z: Tensor, exponents: Tensor) -> Tensor:
    """Evaluate the monomials z^alpha for each row of ``exponents``: (B, dim) -> (B, F)."""
    # Powers up to the max degree, then a gather-and-product over coordinates.
    degree = int(exponents.max()) if exponents.numel() else 0
    powers = torch.stack([z**k for k in range(degree + 1)], dim=-1)  # (B, dim, degree + 1)
    gathered = torch.gather(
        powers.unsqueeze(1).expand(-1, exponents.shape[0], -1, -1),
        3,
        exponents.to(z.device).reshape(1, exponents.shape[0], -1, 1).expand(z.shape[0], -1, -1, 1),
    )
    return gathered.squeeze(-1).prod(dim=-1)


def random_projection(
    num_features: int, dim: int, seed: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Gaussian projection directions, (num_features, dim), with unit-variance projections of
    unit-variance inputs (entries ~ N(0, 1 / dim)); deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_features, dim, generator=gen, dtype=dtype) / math.sqrt(dim)


def power_features(z: Tensor, projection: Tensor, power: int, affine: bool = True) -> Tensor:
    """[1, z, (z @ projection.T)^power] (or only the power part when ``affine`` is False).

    ``z`` is (..., dim); the result is (..., F) with F = num_features (+ 1 + dim).
    """
    powered = (z @ projection.transpose(-1, -2)) ** power
    if not affine:
        return powered
    ones = torch.ones(z.shape[:-1] + (1,), dtype=z.dtype, device=z.device)
    return torch.cat([ones, z, powered], dim=-1)
