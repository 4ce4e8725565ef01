"""Drawing samples: the one path from a denoiser and seeds to the samples every entry point
(train, sample, evaluate) and the measuring callback use, so they agree sample for sample."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.process import DenoiserFn
from lightning_diff.diffusion.samplers import Sampler


@torch.no_grad()
def draw_samples(
    denoiser: DenoiserFn,
    grid: NoiseGrid,
    data_shape: Sequence[int],
    seeds: Sequence[int],
    *,
    sampler: Sampler,
    is_image: bool,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Tensor:
    """One sample per seed (see :mod:`lightning_diff.diffusion.samplers`), on the CPU.

    ``sampler`` is the sampler object (with its settings); ``batch_size`` (default: the sampler's)
    samples are drawn at a time.

    A module is run in eval mode (batch norm uses its running statistics) and put back in the
    mode it was in; image samples are clipped to [-1, 1], as they would be saved.
    """
    was_training = isinstance(denoiser, nn.Module) and denoiser.training
    if isinstance(denoiser, nn.Module):
        denoiser.eval()
    try:
        samples = sampler.sample(
            denoiser, grid, data_shape, seeds, batch_size=batch_size, device=device, progress=progress
        )
    finally:
        if was_training:
            denoiser.train()
    return samples.clamp(-1, 1) if is_image else samples
