"""Samplers on ``D(y, t) -> x0_hat`` along a grid, from its largest level to its smallest.

Every sample has its own generator seeded by its seed, which draws its starting noise and
(for DDPM) its per-step noise in a fixed order, so sample i is the same whatever the batch
size and the same noise can be pushed through different denoisers. The final step returns
the last denoiser output, as in the paper.

- ``ddim``: deterministic DDIM (eta = 0) in x0-parametrisation;
- ``ddpm``: ancestral sampling from the Gaussian posterior q(y_{k-1} | y_k, x0_hat);
- ``heun``: Heun's second-order method on the probability-flow ODE in Karras et al.'s
  variance-exploding coordinates x = y / sqrt(1 - t), sigma = sqrt(t / (1 - t)).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.process import DenoiserFn
from lightning_diff.errors import UserError
from lightning_diff.progress import with_progress
from lightning_diff.seeding import generator


class Sampler:
    """Base class: batching, per-sample noise and the descending walk over the grid."""

    name = ""

    @torch.no_grad()
    def sample(
        self,
        denoiser: DenoiserFn,
        grid: NoiseGrid,
        shape: Sequence[int],
        seeds: Sequence[int],
        batch_size: int = 256,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> Tensor:
        """Samples for ``seeds`` (one per sample), shape (len(seeds), *shape), on the CPU."""
        if len(seeds) == 0:
            raise UserError("num_samples must be at least 1")
        if batch_size < 1:
            raise UserError(f"sampling batch_size must be >= 1, got {batch_size}")
        levels = grid.levels.tolist()[::-1]
        chunks = range(0, len(seeds), batch_size)
        bar = with_progress(chunks, desc=f"sampling ({self.name}, {len(levels)} levels)", disable=not progress, delay=0)
        outputs = []
        for start in bar:
            batch_seeds = seeds[start : start + batch_size]
            gens = [generator(int(s)) for s in batch_seeds]
            noise = _PerSampleNoise(gens, tuple(shape), torch.device(device))
            outputs.append(self.run(denoiser, levels, noise).float().cpu())
        return torch.cat(outputs)

    def run(self, denoiser: DenoiserFn, levels: list[float], noise: "_PerSampleNoise") -> Tensor:
        """Samples of one batch; ``levels`` descend from the largest noise variance."""
        raise NotImplementedError


class _PerSampleNoise:
    """Standard normal draws, each row from its own sample's generator."""

    def __init__(self, gens: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> None:
        self.gens = gens
        self.shape = shape
        self.device = device

    def draw(self) -> Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens]).to(self.device)

    def levels(self, value: float) -> Tensor:
        return torch.full((len(self.gens),), value, device=self.device)


class DDIM(Sampler):
    name = "ddim"

    def run(self, denoiser: DenoiserFn, levels: list[float], noise: _PerSampleNoise) -> Tensor:
        y = noise.draw()
        for k, t in enumerate(levels):
            x0 = denoiser(y, noise.levels(t))
            if k + 1 == len(levels):
                return x0
            t_next = levels[k + 1]
            eps = (y - math.sqrt(1 - t) * x0) / math.sqrt(t)
            y = math.sqrt(1 - t_next) * x0 + math.sqrt(t_next) * eps
        raise AssertionError("unreachable: the grid is non-empty")


class DDPM(Sampler):
    name = "ddpm"

    def run(self, denoiser: DenoiserFn, levels: list[float], noise: _PerSampleNoise) -> Tensor:
        y = noise.draw()
        for k, t in enumerate(levels):
            x0 = denoiser(y, noise.levels(t))
            if k + 1 == len(levels):
                return x0
            t_next = levels[k + 1]
            # alpha_bar = 1 - t; one step of the discrete chain from t to t_next.
            alpha = (1 - t) / (1 - t_next)
            beta = 1 - alpha
            coef_x0 = math.sqrt(1 - t_next) * beta / t
            coef_y = math.sqrt(alpha) * t_next / t
            var = t_next / t * beta
            y = coef_x0 * x0 + coef_y * y + math.sqrt(var) * noise.draw()
        raise AssertionError("unreachable: the grid is non-empty")


class Heun(Sampler):
    name = "heun"

    def run(self, denoiser: DenoiserFn, levels: list[float], noise: _PerSampleNoise) -> Tensor:
        def d_ve(x: Tensor, t: float) -> Tensor:
            sigma = math.sqrt(t / (1 - t))
            return (x - denoiser(x * math.sqrt(1 - t), noise.levels(t))) / sigma

        x = noise.draw() / math.sqrt(1 - levels[0])
        for t, t_next in zip(levels[:-1], levels[1:]):
            h = math.sqrt(t_next / (1 - t_next)) - math.sqrt(t / (1 - t))
            d1 = d_ve(x, t)
            x_euler = x + h * d1
            x = x + h * 0.5 * (d1 + d_ve(x_euler, t_next))
        t_last = levels[-1]
        return denoiser(x * math.sqrt(1 - t_last), noise.levels(t_last))


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (DDIM, DDPM, Heun)}


def make_sampler(name: str) -> Sampler:
    """The sampler called ``name`` (ddim, ddpm or heun)."""
    if name not in SAMPLERS:
        raise UserError(f"sampler {name!r} is unknown; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]()


@dataclass(frozen=True)
class SamplerChoice:
    """The ``sampler`` config group as code (conf/sampler/<name>.yaml): which sampler, and how many
    samples it draws at once."""

    name: str
    batch_size: int

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise UserError(f"sampler.name={self.name!r} is unknown; valid: {', '.join(SAMPLERS)}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserError(f"sampler.batch_size={self.batch_size!r} is not valid: samples drawn at once, an integer >= 1")
