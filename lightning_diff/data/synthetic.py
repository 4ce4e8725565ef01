"""Synthetic data with known ground truth: Gaussians, Gaussian mixtures and 2-D toys.

Training and validation sets are drawn from fixed seeds, so a configuration names one
dataset exactly.
"""

import math

import torch
from torch import Tensor

from lightning_diff.data.base import TensorDataModule
from lightning_diff.errors import UserError
from lightning_diff.seeding import generator

TOYS = ("moons", "circles", "spiral")


def random_rotation(dim: int, gen: torch.Generator) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).reshape(1, -1)


def log_spaced(count: int, low: float, high: float) -> Tensor:
    """``count`` values from ``high`` down to ``low``, evenly spaced in log."""
    if count == 1:
        return torch.tensor([high], dtype=torch.float64)
    return torch.logspace(math.log10(high), math.log10(low), count, dtype=torch.float64)


class SyntheticDataModule(TensorDataModule):
    """Draws ``num_train`` + ``num_val`` points from :meth:`draw` with the run's seed."""

    def __init__(self, num_train: int = 10_000, num_val: int = 2_000, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed, is_image=False)
        if num_train < 1 or num_val < 1:
            raise UserError(f"data.num_train={num_train} and data.num_val={num_val} must both be >= 1")
        self.num_train = num_train
        self.num_val = num_val

    def draw(self, count: int, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def build(self) -> tuple[Tensor, Tensor]:
        gen = generator(self.seed, 0x5747)
        data = self.draw(self.num_train + self.num_val, gen).float()
        return data[: self.num_train], data[self.num_train :]


class GaussianDataModule(SyntheticDataModule):
    """N(mean, U diag(eigvals) U^T) in R^dim with a random rotation U.

    Eigenvalues are ``eigvals`` when given, else log-spaced from ``eig_max`` down to
    ``eig_min``; with ``rank`` only the top ``rank`` are non-zero (a low-rank Gaussian).
    """

    def __init__(
        self,
        dim: int = 8,
        eig_max: float = 1.0,
        eig_min: float = 0.01,
        eigvals: list[float] | None = None,
        rank: int | None = None,
        mean_scale: float = 0.0,
        **kwargs: int,
    ) -> None:
        super().__init__(**kwargs)
        if dim < 1:
            raise UserError(f"data.dim={dim} must be >= 1")
        if rank is not None and not 1 <= rank <= dim:
            raise UserError(f"data.rank={rank} must lie in 1..{dim} (data.dim) or be null")
        if eigvals is not None and len(eigvals) != dim:
            raise UserError(f"data.eigvals has {len(eigvals)} values but data.dim={dim}")
        if eigvals is None and not 0 < eig_min <= eig_max:
            raise UserError(f"need 0 < data.eig_min <= data.eig_max, got {eig_min} and {eig_max}")
        self.dim = dim
        self.rank = rank
        self.eigvals = (
            torch.tensor(eigvals, dtype=torch.float64) if eigvals is not None else log_spaced(dim, eig_min, eig_max)
        )
        if rank is not None:
            self.eigvals[rank:] = 0.0
        self.mean_scale = mean_scale

    def population(self) -> tuple[Tensor, Tensor]:
        """The true mean and covariance (float64)."""
        gen = generator(self.seed, 0xC0F)
        rotation = random_rotation(self.dim, gen)
        mean = self.mean_scale * torch.randn(self.dim, generator=gen, dtype=torch.float64)
        return mean, rotation @ torch.diag(self.eigvals) @ rotation.T

    def draw(self, count: int, gen: torch.Generator) -> Tensor:
        mean, cov = self.population()
        eigvals, eigvecs = torch.linalg.eigh(cov)
        factor = eigvecs * eigvals.clamp_min(0).sqrt().reshape(1, -1)
        return mean + torch.randn(count, self.dim, generator=gen, dtype=torch.float64) @ factor.T


class GaussianMixtureDataModule(SyntheticDataModule):
    """Equal-weight mixture of ``num_components`` isotropic Gaussians with random centres."""

    def __init__(
        self, dim: int = 2, num_components: int = 8, centre_scale: float = 2.0, component_std: float = 0.1, **kwargs: int
    ) -> None:
        super().__init__(**kwargs)
        if dim < 1 or num_components < 1 or component_std < 0:
            raise UserError("data.dim and data.num_components must be >= 1 and data.component_std >= 0")
        self.dim = dim
        self.num_components = num_components
        self.centre_scale = centre_scale
        self.component_std = component_std

    def centres(self) -> Tensor:
        gen = generator(self.seed, 0xCE)
        return self.centre_scale * torch.randn(self.num_components, self.dim, generator=gen, dtype=torch.float64)

    def draw(self, count: int, gen: torch.Generator) -> Tensor:
        which = torch.randint(self.num_components, (count,), generator=gen)
        noise = torch.randn(count, self.dim, generator=gen, dtype=torch.float64)
        return self.centres()[which] + self.component_std * noise


class Toy2DDataModule(SyntheticDataModule):
    """Two moons, two circles or a spiral in 2-D, with Gaussian jitter ``noise``.

    With ``standardize`` each coordinate is shifted and scaled to zero mean and unit
    variance (using the population statistics of a large fixed draw).
    """

    def __init__(self, name: str = "moons", noise: float = 0.05, standardize: bool = True, **kwargs: int) -> None:
        super().__init__(**kwargs)
        if name not in TOYS:
            raise UserError(f"data.name={name!r} is not a 2-D toy; choose one of {', '.join(TOYS)}")
        self.name = name
        self.noise = noise
        self.standardize = standardize

    def _shape(self, count: int, gen: torch.Generator) -> Tensor:
        u = torch.rand(count, generator=gen, dtype=torch.float64)
        upper = torch.rand(count, generator=gen) < 0.5
        if self.name == "moons":
            angle = math.pi * u
            x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
            y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        elif self.name == "circles":
            angle = 2 * math.pi * u
            radius = torch.where(upper, torch.ones_like(u), 0.5 * torch.ones_like(u))
            x, y = radius * torch.cos(angle), radius * torch.sin(angle)
        else:
            angle = 3 * math.pi * torch.sqrt(u)
            x, y = angle * torch.cos(angle) / (3 * math.pi), angle * torch.sin(angle) / (3 * math.pi)
        points = torch.stack([x, y], dim=1)
        return points + self.noise * torch.randn(count, 2, generator=gen, dtype=torch.float64)

    def draw(self, count: int, gen: torch.Generator) -> Tensor:
        points = self._shape(count, gen)
        if self.standardize:
            reference = self._shape(200_000, generator(0x70F))
            points = (points - reference.mean(dim=0)) / reference.std(dim=0)
        return points
