"""K per-level networks trained together (one model, every step sees the batch at all K levels)
against the same K networks trained one after another, each seeing the same samples.

Ours: the family's ``per_level`` denoiser (``PerLevel``) with the ``every_level`` objective,
Adam over all K networks, ``steps`` steps. The peer: a plain loop per network at its level,
``steps`` steps each on the same batches, so every network sees the same samples as in ours.
Both start from the same weights and use the same Adam settings. ``paths`` lists PerLevel's
evaluation modes to measure: ``auto`` (what training uses), ``loop`` or ``stacked`` (forced).
"""

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import workloads
from benchmarks.measure import interleaved, median
from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.denoisers import bottleneck, unet
from lightning_diff.denoisers.conditioning import PerLevel
from lightning_diff.diffusion.grids import NoiseGrid

DESCRIPTION = "K=10 per-level networks trained together (PerLevel, every_level) vs one after another, same samples each"
SPEEDUP_TARGET = 1.5

# (label, family, data shape, batch, steps, knobs)
_TOY = ("toy MLP 2-64-1-64-2", "bottleneck", (2,), 256, {})
_UNET_SMALL = ("UNet 1x16x16 w8", "unet", (1, 16, 16), 16, {"num_blocks": 2, "base_channels": 8})
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"num_levels": 3, "cases": [(*_TOY[:3], 16, 3, {}), ("UNet 1x8x8 w4", "unet", (1, 8, 8), 4, 2,
                 {"num_blocks": 1, "base_channels": 4})], "paths": ["auto", "stacked"], "repeats": 1},
    "cpu": {"num_levels": 10, "cases": [(*_TOY[:4], 100, {}), (*_UNET_SMALL[:4], 8, _UNET_SMALL[4])],
                "paths": ["auto", "stacked"], "repeats": 5},
    "gpu": {"num_levels": 10, "cases": [(*_TOY[:4], 200, {}), (*_UNET_SMALL[:4], 50, _UNET_SMALL[4]),
                ("UNet 3x32x32 w32", "unet", (3, 32, 32), 64, 30, {"num_blocks": 3, "base_channels": 32})],
                "paths": ["loop", "stacked"], "repeats": 5},
}


def build(family: str, shape: tuple[int, ...], grid: NoiseGrid, knobs: dict[str, Any], seed: int = 0) -> PerLevel:
    torch.manual_seed(seed)
    module = {"bottleneck": bottleneck, "unet": unet}[family]
    model = module.build(shape, grid, conditioning="per_level", **knobs)
    assert isinstance(model, PerLevel)
    return model


def data_for(shape: tuple[int, ...], count: int = 4096) -> Tensor:
    return workloads.images(count, shape)


def batches(data: Tensor, batch: int, steps: int) -> list[Tensor]:
    """The batches of every step, fixed up front so both arms see the same samples."""
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(1))
    return [data[order[(s * batch) % (data.shape[0] - batch + 1) :][:batch]] for s in range(steps)]


def train_together(model: PerLevel, grid: NoiseGrid, steps: list[Tensor], path: str) -> Callable[[], None]:
    objective = workloads.objective(grid, "per_level")
    model.stacked = {"auto": "auto", "loop": False, "stacked": True}[path]

    def go() -> None:
        net = copy.deepcopy(model)
        optimizer = workloads.adam()(net.parameters())
        for step, x0 in enumerate(steps):
            loss = objective.loss(net, x0, 0, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return go


def train_one_after_another(model: PerLevel, grid: NoiseGrid, steps: list[Tensor]) -> Callable[[], None]:
    levels = grid.levels.tolist()

    def go() -> None:
        for level, prototype in zip(levels, model.nets):
            net: nn.Module = copy.deepcopy(prototype)
            optimizer = workloads.adam()(net.parameters())
            a, s = level**0.5, (1 - level) ** 0.5
            for x0 in steps:
                y = s * x0 + a * torch.randn_like(x0)
                loss = (net(y) - x0).pow(2).flatten(1).mean(dim=1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    return go


def run(config: Config) -> list[Row]:
    settings, device = config.settings, config.device
    grid = workloads.grid(settings["num_levels"])
    rows = []
    for label, family, shape, batch, num_steps, knobs in settings["cases"]:
        model = build(family, tuple(shape), grid, knobs).to(device)
        steps = [x.to(device) for x in batches(data_for(tuple(shape)), batch, num_steps)]
        for path in settings["paths"]:
            times = interleaved(
                {
                    "ours": train_together(model, grid, steps, path),
                    "peer": train_one_after_another(model, grid, steps),
                },
                device,
                repeats=settings["repeats"],
            )
            ours, peer = median(times["ours"]), median(times["peer"])
            rows.append(
                Row(
                    "per_level_training",
                    f"{label} b{batch} x{num_steps} steps [{path}]",
                    "s",
                    ours,
                    peer,
                    f"{len(grid)} nets in turn",
                    ("<=", round(1 / SPEEDUP_TARGET, 3)),
                    note=f"speed-up {peer / ours:.2f}x (target >= {SPEEDUP_TARGET}x); median of {len(times['ours'])}",
                    extra={"ours_s": times["ours"], "peer_s": times["peer"]},
                )
            )
    return rows
