"""Sampling throughput: our samplers against a plain loop over the same per-level networks.

Ours: ``lightning_diff.diffusion.samplers`` (DDIM on a 10-level grid, Heun on an 18-level grid,
i.e. 35 network calls) on the per-level paper UNet: per-sample noise generators (sample i is
the same whatever the batch) and routing through ``PerLevel``. The peer: the same update
formulas written as a loop that calls the level's network directly, noise from one generator
on the device. Both in eval mode without gradients; images/s over ``batch`` images.
"""

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import workloads
from benchmarks.measure import interleaved
from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.denoisers.conditioning import PerLevel
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.samplers import make_sampler

DESCRIPTION = "images/s of 10-level DDIM and 18-step Heun on the per-level paper UNet: our samplers vs a plain loop"

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"shape": (1, 8, 8), "num_blocks": 1, "base_channels": 4, "batch": 2, "repeats": 1,
                 "samplers": [("ddim", 3), ("heun", 3)]},
    "cpu": {"shape": (3, 64, 64), "num_blocks": 3, "base_channels": 32, "batch": 4, "repeats": 2,
                "samplers": [("ddim", 10), ("heun", 18)]},
    "gpu": {"shape": (3, 64, 64), "num_blocks": 3, "base_channels": 32, "batch": 256, "repeats": 5,
                "samplers": [("ddim", 10), ("heun", 18)]},
}


@torch.no_grad()
def plain_ddim(nets: list[nn.Module], levels: list[float], y: Tensor) -> Tensor:
    """DDIM (eta = 0) in x0-parametrisation, largest level first; ``nets[k]`` serves ``levels[k]``."""
    order = list(range(len(levels)))[::-1]
    for step, k in enumerate(order):
        x0 = nets[k](y)
        if step + 1 == len(order):
            return x0
        t, t_next = levels[k], levels[order[step + 1]]
        eps = (y - math.sqrt(1 - t) * x0) / math.sqrt(t)
        y = math.sqrt(1 - t_next) * x0 + math.sqrt(t_next) * eps
    raise AssertionError("unreachable")


@torch.no_grad()
def plain_heun(nets: list[nn.Module], levels: list[float], y: Tensor) -> Tensor:
    """Heun on the probability-flow ODE in x = y / sqrt(1 - t), sigma = sqrt(t / (1 - t))."""

    def slope(x: Tensor, k: int) -> Tensor:
        t = levels[k]
        return (x - nets[k](x * math.sqrt(1 - t))) / math.sqrt(t / (1 - t))

    order = list(range(len(levels)))[::-1]
    x = y / math.sqrt(1 - levels[order[0]])
    for k, k_next in itertools.pairwise(order):
        h = math.sqrt(levels[k_next] / (1 - levels[k_next])) - math.sqrt(levels[k] / (1 - levels[k]))
        d1 = slope(x, k)
        x = x + h * 0.5 * (d1 + slope(x + h * d1, k_next))
    return nets[order[-1]](x * math.sqrt(1 - levels[order[-1]]))


PLAIN: dict[str, Callable[[list[nn.Module], list[float], Tensor], Tensor]] = {"ddim": plain_ddim, "heun": plain_heun}


def measure(name: str, num_levels: int, settings: dict[str, Any], device: torch.device) -> Row:
    shape, batch = tuple(settings["shape"]), settings["batch"]
    grid: NoiseGrid = workloads.grid(num_levels)
    model = workloads.unet_denoiser(shape, grid, "per_level", settings["num_blocks"], settings["base_channels"])
    assert isinstance(model, PerLevel)
    model = model.to(device).eval()
    sampler = make_sampler(name)
    seeds = list(range(batch))
    levels = grid.levels.tolist()
    generator = torch.Generator(device=device).manual_seed(0)

    def ours() -> Tensor:
        return sampler.sample(model, grid, shape, seeds, batch_size=batch, device=device)

    def peer() -> Tensor:
        noise = torch.randn((batch, *shape), generator=generator, device=device)
        return PLAIN[name](list(model.nets), levels, noise)

    times = interleaved({"ours": ours, "peer": peer}, device, repeats=settings["repeats"])
    calls = num_levels if name == "ddim" else 2 * num_levels - 1
    case = f"{name} {num_levels} levels ({calls} calls), UNet {'x'.join(map(str, shape))}, batch {batch}"
    note = f"median of {settings['repeats']} after a warm-up"
    return Row.images_per_second("sampling", case, batch, times, "plain loop", note)


def run(config: Config) -> list[Row]:
    return [measure(name, levels, config.settings, config.device) for name, levels in config.settings["samplers"]]
