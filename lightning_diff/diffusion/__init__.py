"""The shared diffusion objective: noise process, level grids, loss and samplers.

This package knows nothing of denoiser families: it only calls ``D(y, t) -> x0_hat``.
"""

from lightning_diff.diffusion.grids import NoiseGrid, make_grid
from lightning_diff.diffusion.objective import DiffusionObjective
from lightning_diff.diffusion.process import add_noise, signal_scale
from lightning_diff.diffusion.samplers import DDIM, DDPM, SAMPLERS, Heun, Sampler, make_sampler

__all__ = [
    "DDIM",
    "DDPM",
    "SAMPLERS",
    "DiffusionObjective",
    "Heun",
    "NoiseGrid",
    "Sampler",
    "add_noise",
    "make_grid",
    "make_sampler",
    "signal_scale",
]
