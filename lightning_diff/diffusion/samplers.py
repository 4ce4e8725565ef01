"""Samplers on ``D(y, t) -> x0_hat`` along a grid, from its largest level to its smallest.

Every sample has its own generator seeded by its seed, which draws its starting noise and
then (DDPM, DDIM with eta > 0) one noise draw per step but the last, in that order, so sample i
is the same whatever the batch size and the same noise can be pushed through different
denoisers. The final step returns the last denoiser output, as in the paper.

- ``ddim``: DDIM (Song et al. 2021) in x0-parametrisation; its one setting ``eta`` in [0, 1]
  scales the per-step noise (0, the default: deterministic; 1: DDPM's posterior variance);
- ``ddpm``: ancestral sampling from the Gaussian posterior q(y_{k-1} | y_k, x0_hat);
- ``heun``: Heun's second-order method on the probability-flow ODE in Karras et al.'s
  variance-exploding coordinates x = y / sqrt(1 - t), sigma = sqrt(t / (1 - t)).

A sampler is an object with its settings (``DDIM(eta=0.5, batch_size=256)``; ``batch_size``: samples
drawn at once, which changes no sample): the ``sampler`` config node builds it (``_target_``) and
the object travels, not its name. ``make_sampler(name, **settings)`` builds one by name. tests/test_sampler_references.py holds them equal to diffusers' DDIM and DDPM
schedulers and to k-diffusion's ``sample_heun``.
"""

import inspect
import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.process import DenoiserFn
from lightning_diff.errors import UserError
from lightning_diff.progress import Ticks
from lightning_diff.seeding import generator


class Sampler:
    """Base class: batching, per-sample noise and the descending walk over the grid."""

    name = ""

    def __init__(self, batch_size: int = 256) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"sampler.batch_size={batch_size!r} is not valid: samples drawn at once, an integer >= 1")
        self.batch_size = batch_size

    def settings(self) -> dict[str, float]:
        """The settings that change what is drawn, by name, as ``make_sampler`` takes them."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{key}={value!r}' for key, value in self.settings().items())})"

    @torch.no_grad()
    def sample(
        self,
        denoiser: DenoiserFn,
        grid: NoiseGrid,
        shape: Sequence[int],
        seeds: Sequence[int],
        batch_size: int | None = None,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> Tensor:
        """Samples for ``seeds`` (one per sample), shape (len(seeds), *shape), on the CPU; ``batch_size``
        (default: the sampler's) samples at a time."""
        if len(seeds) == 0:
            raise UserError("num_samples must be at least 1")
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise UserError(f"sampling batch_size must be >= 1, got {batch_size}")
        levels = grid.levels.tolist()[::-1]
        chunks = range(0, len(seeds), batch_size)
        # Counted per denoiser call, so a slow machine (a few seconds a call) shows progress within a batch.
        ticks = Ticks(len(chunks) * self.calls(len(levels)), desc=f"sampling ({self.name}, {len(levels)} levels)",
                      unit="call", disable=not progress)

        def counted(y: Tensor, t: Tensor) -> Tensor:
            out = denoiser(y, t)
            ticks.tick()
            return out

        outputs = []
        for start in chunks:
            batch_seeds = seeds[start : start + batch_size]
            gens = [generator(int(s)) for s in batch_seeds]
            noise = _PerSampleNoise(gens, tuple(shape), torch.device(device))
            outputs.append(self.run(counted, levels, noise).float().cpu())
        ticks.close()
        return torch.cat(outputs)

    def calls(self, num_levels: int) -> int:
        """Denoiser calls per batch on a grid of ``num_levels`` levels (one per level)."""
        return num_levels

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
    """DDIM; ``eta`` scales the noise of each step (Song et al. 2021, eq. 16)."""

    name = "ddim"

    def __init__(self, eta: float = 0.0, batch_size: int = 256) -> None:
        super().__init__(batch_size)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise UserError(
                f"sampler.eta={eta!r} is not valid: DDIM's noise scale, a number in [0, 1] "
                "(0 = deterministic DDIM, 1 = DDPM's posterior variance)"
            )
        self.eta = float(eta)

    def settings(self) -> dict[str, float]:
        return {"eta": self.eta}

    def run(self, denoiser: DenoiserFn, levels: list[float], noise: _PerSampleNoise) -> Tensor:
        y = noise.draw()
        for k, t in enumerate(levels):
            x0 = denoiser(y, noise.levels(t))
            if k + 1 == len(levels):
                return x0
            t_next = levels[k + 1]
            eps = (y - math.sqrt(1 - t) * x0) / math.sqrt(t)
            # sigma_k^2 of eq. 16 with alpha_bar = 1 - t: that part of the variance t_next is fresh
            # noise, the rest keeps the direction of eps (eta = 0 leaves sqrt(t_next) exactly).
            fresh = self.eta**2 * t_next / t * (1 - (1 - t) / (1 - t_next))
            y = math.sqrt(1 - t_next) * x0 + math.sqrt(t_next - fresh) * eps
            if self.eta > 0:
                y = y + math.sqrt(fresh) * noise.draw()
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

    def calls(self, num_levels: int) -> int:
        return 2 * num_levels - 1  # two per step between levels, one at the last level

    def run(self, denoiser: DenoiserFn, levels: list[float], noise: _PerSampleNoise) -> Tensor:
        def d_ve(x: Tensor, t: float) -> Tensor:
            sigma = math.sqrt(t / (1 - t))
            return (x - denoiser(x * math.sqrt(1 - t), noise.levels(t))) / sigma

        x = noise.draw() / math.sqrt(1 - levels[0])
        for t, t_next in itertools.pairwise(levels):
            h = math.sqrt(t_next / (1 - t_next)) - math.sqrt(t / (1 - t))
            d1 = d_ve(x, t)
            x_euler = x + h * d1
            x = x + h * 0.5 * (d1 + d_ve(x_euler, t_next))
        t_last = levels[-1]
        return denoiser(x * math.sqrt(1 - t_last), noise.levels(t_last))


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (DDIM, DDPM, Heun)}


def make_sampler(name: str, **settings: float) -> Sampler:
    """The sampler called ``name`` (ddim, ddpm or heun) with ``settings`` (batch_size; ddim: eta)."""
    if name not in SAMPLERS:
        raise UserError(f"sampler {name!r} is unknown; valid: {', '.join(SAMPLERS)}")
    valid = list(inspect.signature(SAMPLERS[name]).parameters)
    unknown = [key for key in settings if key not in valid]
    if unknown:
        raise UserError(
            f"{', '.join(f'sampler.{key}' for key in unknown)}: not a setting of the {name} sampler; "
            f"valid settings: {', '.join(valid) or 'none'}"
        )
    return SAMPLERS[name](**settings)
