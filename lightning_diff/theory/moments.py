"""Pairs of point sets with equal moments up to a chosen order: the polynomial claim's test data.

A regular n-gon of radius r, {r (cos(phi + 2 pi k / n), sin(phi + 2 pi k / n))}, has the same
moments of every order below n whatever its phase phi, and the phases 0 and pi / n differ at
order n (E[Re (v1 + i v2)^n] = r^n cos(n phi) flips sign). Attaching the polygon to every
point of a base set (x = b + v, all pairs) keeps that property, because every moment of
b + v of order m is a sum of products of base moments and polygon moments of order <= m.
So base + polygon(phase 0) and base + polygon(phase pi / n) are two different sets with
equal moments up to order n - 1: for a degree-p polynomial denoiser take n = 2p + 1. A base
with non-zero third moments (``skewed_base``) makes the quadratic features matter, so a pair
that differs at order 2p really does change what a degree-p denoiser generates.
See docs/theory.md, section "Polynomial".
"""

import math

import torch
from torch import Tensor

from lightning_diff.data.base import TensorDataModule
from lightning_diff.denoisers.features import monomial_exponents, monomials
from lightning_diff.errors import UserError
from lightning_diff.seeding import generator


def regular_polygon(sides: int, radius: float, phase: float = 0.0, dim: int = 2) -> Tensor:
    """The ``sides`` vertices of a regular polygon in the plane of the first two coordinates, (sides, dim)."""
    if sides < 2 or dim < 2:
        raise UserError(f"a regular polygon needs at least 2 sides and dimension >= 2, got {sides} sides in dimension {dim}")
    angles = phase + 2 * math.pi * torch.arange(sides, dtype=torch.float64) / sides
    vertices = torch.zeros(sides, dim, dtype=torch.float64)
    vertices[:, 0], vertices[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
    return vertices


def attach_polygon(base: Tensor, sides: int, radius: float, phase: float) -> Tensor:
    """Every base point plus every polygon vertex, in blocks of ``sides`` rows per base point."""
    base = base.to(torch.float64)
    vertices = regular_polygon(sides, radius, phase, base.shape[1])
    return (base[:, None, :] + vertices[None, :, :]).reshape(-1, base.shape[1])


def moment_matched_pair(base: Tensor, equal_up_to: int, radius: float) -> tuple[Tensor, Tensor]:
    """Two different sets whose moments agree up to order ``equal_up_to`` and differ at the next.

    Built as base + regular (equal_up_to + 1)-gon at phases 0 and pi / (equal_up_to + 1).
    """
    sides = equal_up_to + 1
    return attach_polygon(base, sides, radius, 0.0), attach_polygon(base, sides, radius, math.pi / sides)


def split_polygons(data: Tensor, sides: int) -> tuple[Tensor, float, float]:
    """Recover (base, radius, phase) from a set built by :func:`attach_polygon`.

    Raises UserError when ``data`` does not have that structure, so a check configured for
    the wrong data says so instead of comparing unrelated sets.
    """
    flat = data.reshape(data.shape[0], -1).to(torch.float64)
    if flat.shape[1] < 2 or flat.shape[0] % sides:
        raise UserError(
            f"the training set ({flat.shape[0]} points of dimension {flat.shape[1]}) is not a base set with a "
            f"regular {sides}-gon attached to each point; use the data of conf/experiment/paper/theory_polynomial.yaml "
            "(lightning_diff.theory.moments.MomentPairDataModule) with theory.equal_up_to = data.equal_up_to"
        )
    blocks = flat.reshape(-1, sides, flat.shape[1])
    base = blocks.mean(dim=1)
    offsets = blocks - base[:, None, :]
    radius = float(offsets[0, 0, :2].norm())
    phase = math.atan2(float(offsets[0, 0, 1]), float(offsets[0, 0, 0]))
    expected = attach_polygon(base, sides, radius, phase)
    scale = max(1.0, float(flat.abs().max()))
    if float((expected - flat).abs().max()) > 1e-4 * scale:
        raise UserError(
            f"the training set is not a base set with a regular {sides}-gon attached to each point (in blocks of "
            f"{sides} rows); use lightning_diff.theory.moments.MomentPairDataModule with data.equal_up_to = {sides - 1}"
        )
    return base, radius, phase


def moments(data: Tensor, order: int) -> Tensor:
    """All raw moments E[x^alpha] with |alpha| == ``order``, in graded monomial order (float64)."""
    flat = data.reshape(data.shape[0], -1).to(torch.float64)
    exponents = monomial_exponents(flat.shape[1], order)
    exponents = exponents[exponents.sum(dim=1) == order]
    return monomials(flat, exponents).mean(dim=0)


def moment_gap(first: Tensor, second: Tensor, order: int) -> float:
    """Largest absolute difference between the two sets' moments of order ``order``."""
    return float((moments(first, order) - moments(second, order)).abs().max())


def skewed_base(count: int, dim: int, scale: float, gen: torch.Generator) -> Tensor:
    """``count`` points with independent centred exponential coordinates times ``scale``.

    Exponential coordinates have third moment 2 scale^3, so quadratic features carry signal
    and the fourth moments change the fitted readout.
    """
    return scale * (torch.empty(count, dim, dtype=torch.float64).exponential_(generator=gen) - 1.0)


class MomentPairDataModule(TensorDataModule):
    """One member ("a" or "b") of a moment-matched pair in R^dim.

    Training set: ``num_base`` skewed base points, each with a regular (equal_up_to + 1)-gon of
    ``radius`` attached (phase 0 for "a", pi / (equal_up_to + 1) for "b"), so the training set
    has num_base * (equal_up_to + 1) points and the two members share all moments up to order
    ``equal_up_to``. The validation set is built the same way from ``num_val_base`` further points.
    """

    def __init__(
        self,
        member: str = "a",
        dim: int = 2,
        equal_up_to: int = 4,
        num_base: int = 400,
        num_val_base: int = 50,
        base_scale: float = 0.5,
        radius: float = 1.0,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, is_image=False)
        if member not in ("a", "b"):
            raise UserError(f"data.member={member!r} is not a member of the pair; choose a or b")
        if equal_up_to < 1 or num_base < 1 or num_val_base < 1 or dim < 2:
            raise UserError(
                f"data.equal_up_to={equal_up_to}, data.num_base={num_base} and data.num_val_base={num_val_base} must be "
                f">= 1 and data.dim={dim} >= 2"
            )
        self.member = member
        self.dim = dim
        self.equal_up_to = equal_up_to
        self.num_base = num_base
        self.num_val_base = num_val_base
        self.base_scale = base_scale
        self.radius = radius

    def build(self) -> tuple[Tensor, Tensor]:
        base = skewed_base(self.num_base + self.num_val_base, self.dim, self.base_scale, generator(self.seed, 0x3043))
        sides = self.equal_up_to + 1
        phase = 0.0 if self.member == "a" else math.pi / sides
        train = attach_polygon(base[: self.num_base], sides, self.radius, phase)
        val = attach_polygon(base[self.num_base :], sides, self.radius, phase)
        return train.float(), val.float()
