"""The exact LS and ELS machines at full dataset size: seconds per sample and peak memory.

Two cases, each for LS (zero padding) and ELS (circular), every candidate patch in the posterior:

- ``uniform``: uniform noise images of CIFAR-10's size, 3x32x32, N = 50,000 (no 50,000-image
  set ships offline), 10 levels, patches 9 -> 3;
- ``fashion``: all 60,000 Fashion-MNIST training images at 28x28 (Debian's dataset-fashion-mnist
  through the package's datamodule, or a torchvision root holding FashionMNIST/raw/ given as
  ``fashion_root``), 20 levels, the machines' default patch sizes.

There is no peer: the released code needs hours per sample at these sizes. A row is ours alone,
DDIM per sample from one run of ``num_samples`` samples in one batch, with the peak memory
of that run: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the process's peak resident
memory so far (it cannot be reset between rows). A machine that runs out of GPU memory, or a
dataset that is missing, gives a row that says so, and the other rows still run. ``tiny`` runs
the same code on a few images (``benchmarks/gpu.sh --device cpu``).

Expected peaks (not yet measured): ELS holds every candidate patch of a level twice (the patches
and their copy about the mean), 7.0e9 floats each at 3x32x32, N = 50,000, size 9: about 56 GB,
within an 80 GB H100; Fashion-MNIST about 20-25 GB (sizes 13-15, and 7 in float64).
"""

import math
import time
from typing import Any

import torch
from torch import Tensor

from benchmarks.measure import peak_rss_mib, synchronize
from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.data.images import FashionMNISTDataModule
from lightning_diff.denoisers import local_score
from lightning_diff.diffusion.grids import NoiseGrid, make_grid
from lightning_diff.diffusion.samplers import make_sampler
from lightning_diff.errors import UserError

DESCRIPTION = (
    "exact LS and ELS at full dataset size (3x32x32 N=50,000; Fashion-MNIST 60,000 x 28x28, 20 levels): "
    "s/sample and peak memory, no peer"
)
MACHINES: dict[str, dict[str, Any]] = {
    "LS": dict(equivariant=False, padding="zeros"),
    "ELS": dict(equivariant=True, padding="circular"),
}
TEN_LEVEL_PATCHES = [9, 9, 9, 7, 7, 7, 5, 5, 3, 3]

SIZES: dict[str, dict[str, Any]] = {
    # fashion_train None: every training image; fashion_root None: Debian's files.
    "tiny": dict(
        uniform_train=32, uniform_side=8, uniform_patch_sizes=[5, 5, 3], fashion_train=32, fashion_levels=3,
        fashion_root=None, num_samples=2,
    ),
    "cpu": dict(
        uniform_train=200, uniform_side=32, uniform_patch_sizes=TEN_LEVEL_PATCHES, fashion_train=200,
        fashion_levels=20, fashion_root=None, num_samples=2,
    ),
    "gpu": dict(
        uniform_train=50_000, uniform_side=32, uniform_patch_sizes=TEN_LEVEL_PATCHES, fashion_train=None,
        fashion_levels=20, fashion_root=None, num_samples=4,
    ),
}


def fashion_images(s: dict[str, Any]) -> Tensor:
    """Fashion-MNIST's training images at 28x28 in [-1, 1], as a training run would see them."""
    datamodule = FashionMNISTDataModule(root=s["fashion_root"], num_train=s["fashion_train"], seed=0)
    datamodule.setup("fit")
    return datamodule.train_data


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_mib() / 1024


def time_machine(
    x0: Tensor, grid: NoiseGrid, patch_sizes: list[int] | None, options: dict[str, Any], num_samples: int,
    device: torch.device,
) -> tuple[float, float, list[int]]:
    """Seconds per sample of DDIM, the peak memory (GiB) and the patch sizes, highest noise first."""
    shape = tuple(x0.shape[1:])
    machine = local_score.build(shape, grid, patch_sizes=patch_sizes, **options).to(device)
    machine.fit_data(x0)  # keeps the training tensor: nothing to time
    # One call at the lowest level first, so device start-up (kernels, library handles) is not timed.
    machine(torch.randn(1, *shape, device=device), grid.levels[:1].float().to(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    samples = make_sampler("ddim").sample(machine, grid, shape, list(range(num_samples)), device=device)
    synchronize(device)
    seconds = (time.perf_counter() - start) / num_samples
    assert torch.isfinite(samples).all(), "non-finite samples"
    return seconds, peak_memory_gib(device), list(reversed(machine.patch_sizes))


def case_rows(
    name: str, x0: Tensor, grid: NoiseGrid, patch_sizes: list[int] | None, s: dict[str, Any], device: torch.device
) -> list[Row]:
    """One row per machine on the training images ``x0``."""
    memory = "peak GPU memory (max_memory_allocated)" if device.type == "cuda" else "peak RSS of the process so far"
    rows = []
    for kind, options in MACHINES.items():
        case = f"{name} {s['num_samples']} samples {len(grid)} levels [{kind}]"
        try:
            seconds, peak, sizes = time_machine(x0.to(device), grid, patch_sizes, options, s["num_samples"], device)
        except torch.cuda.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            first_line = str(error).splitlines()[0]
            rows.append(Row("local_score_scale", case, "s/sample", math.nan, note=f"out of GPU memory: {first_line}"))
            continue
        rows.append(Row(
            "local_score_scale", case, "s/sample", seconds,
            note=f"{memory} {peak:.2f} GiB; DDIM, one run of {s['num_samples']} samples in one batch; "
            f"patches {','.join(map(str, sizes))}",
            extra={"peak_memory_gib": peak, "patch_sizes": sizes, "levels": grid.levels.tolist()},
        ))
    return rows


def run(config: Config) -> list[Row]:
    s = config.settings
    device = config.device
    side = s["uniform_side"]
    uniform = torch.rand(s["uniform_train"], 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    patch_sizes = s["uniform_patch_sizes"]
    rows = case_rows(
        f"uniform 3x{side}x{side} N={s['uniform_train']}", uniform, make_grid(len(patch_sizes)), patch_sizes, s, device
    )
    grid = make_grid(s["fashion_levels"])
    try:
        fashion = fashion_images(s)
    except UserError as error:
        return rows + [
            Row("local_score_scale", f"Fashion-MNIST 1x28x28 [{kind}]", "s/sample", math.nan, note=f"not run: {error}")
            for kind in MACHINES
        ]
    return rows + case_rows(f"Fashion-MNIST 1x28x28 N={fashion.shape[0]}", fashion, grid, None, s, device)
