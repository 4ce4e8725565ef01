"""The equivariant local score machine: ours against the straightforward per-pixel computation.

The straightforward machine (the shape of Kamb & Ganguli's released code) takes one output
pixel at a time: its wrapped noisy patch, the squared distance to every fully-inside patch of
every training image, a softmax over all of them, the weighted centre pixels. Ours scores all
pixels of all samples against the candidates in chunks of one matrix product each, folding the
scalars into the operands, exponentiating in place and reading the normaliser off the same
product (lightning_diff/denoisers/local_score.py). Both compute the same posterior; the row
reports how far each is from the definition computed in float64 on the timed pixels.

At the ``cpu`` size (issue 14's case: 16x16 grey, N = 1,000 of scikit-learn's digits, 10
levels, patches 9 -> 3, 64 samples) the straightforward machine is timed on ``peer_pixels`` pixels per level and scaled
to all pixels (every pixel of circular ELS has the same candidates, so the cost per pixel is
the same); a second row holds ours against the issue's 60 s budget. ``gpu``: 3x32x32,
N = 50,000 (CIFAR-10's size; the released code needs hours per sample at N = 60,000).
"""

import math
import resource
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.data.images import DigitsDataModule
from lightning_diff.denoisers import local_score
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.diffusion.samplers import make_sampler

DESCRIPTION = "equivariant local score machine (ELS, circular), fit + 10-level DDIM: chunked matmul posterior vs per pixel"
BUDGET_S = 60.0
# Kamb & Ganguli's released ELS timed on the development machine (issue 14): 16x16, N = 1,000,
# 9 calls with patches 15 -> 5, 38 s for 16 samples. Target: at least 10x faster per sample.
RELEASED_S_PER_SAMPLE = 2.5
RELEASED_PATCH_SIZES = [15, 13, 13, 11, 11, 9, 7, 7, 5]
# Candidates scored at once by the straightforward machine (B x chunk x patch floats).
PEER_CHUNK = 4096

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        data="digits", channels=1, image_size=8, num_train=20, num_samples=4, patch_sizes=[5, 3, 3], peer_pixels=None
    ),
    "cpu": dict(
        data="digits", channels=1, image_size=16, num_train=1000, num_samples=64,
        patch_sizes=[9, 9, 9, 7, 7, 7, 5, 5, 3, 3], peer_pixels=4,
    ),
    # No 50,000-image dataset ships offline: uniform noise images of CIFAR-10's size.
    "gpu": dict(
        data="uniform", channels=3, image_size=32, num_train=50_000, num_samples=16,
        patch_sizes=[9, 9, 9, 7, 7, 7, 5, 5, 3, 3], peer_pixels=2,
    ),
}


def straightforward_pixel(data: Tensor, y: Tensor, t: float, size: int, pixel: tuple[int, int]) -> Tensor:
    """ELS (circular) at one pixel for every row of ``y``: (B, C)."""
    channels = data.shape[1]
    half, a = size // 2, math.sqrt(1.0 - t)
    i, j = pixel
    wrapped = torch.roll(y, shifts=(half - i, half - j), dims=(2, 3))[:, :, :size, :size]
    query = wrapped.reshape(y.shape[0], -1)
    candidates = F.unfold(data, size).transpose(1, 2).reshape(-1, channels * size * size)
    centres = candidates.reshape(-1, channels, size, size)[:, :, half, half]
    logits = torch.cat([
        -(query[:, None, :] - a * candidates[None, start : start + PEER_CHUNK]).pow(2).sum(-1) / (2 * t)
        for start in range(0, candidates.shape[0], PEER_CHUNK)
    ], dim=1)
    return torch.softmax(logits, dim=1) @ centres


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def training_images(s: dict[str, Any], gen: torch.Generator) -> Tensor:
    """scikit-learn's digits resized (shipped with the package), or uniform noise images."""
    shape = (s["channels"], s["image_size"], s["image_size"])
    if s["data"] == "uniform":
        return torch.rand(s["num_train"], *shape, generator=gen) * 2 - 1
    datamodule = DigitsDataModule(image_size=s["image_size"], num_train=s["num_train"], seed=0)
    datamodule.setup("fit")
    return datamodule.train_data


def run(config: Config) -> list[Row]:
    s = config.settings
    device = config.device
    shape = (s["channels"], s["image_size"], s["image_size"])
    sizes = s["patch_sizes"]
    gen = torch.Generator().manual_seed(0)
    x0 = training_images(s, gen).to(device)
    grid = make_grid(len(sizes))
    seeds = list(range(s["num_samples"]))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    machine = local_score.build(shape, grid, equivariant=True, padding="circular", patch_sizes=sizes).to(device)
    machine.fit_data(x0)
    samples = make_sampler("ddim").sample(machine, grid, shape, seeds, device=device)
    sync()
    ours = time.perf_counter() - start
    assert torch.isfinite(samples).all(), "non-finite samples"

    # The straightforward machine on one batch of noisy inputs per level: a sampling run asks
    # each level once, so the sum over levels is its sampling run.
    height, width = shape[1:]
    all_pixels = [(i, j) for i in range(height) for j in range(width)]
    pick = s["peer_pixels"]
    pixels = [all_pixels[k] for k in torch.randperm(len(all_pixels), generator=gen)[:pick].tolist()] if pick else all_pixels
    y = torch.randn(s["num_samples"], *shape, generator=gen).to(device)
    peer, worst, worst_peer = 0.0, 0.0, 0.0
    for k, t in enumerate(grid.levels.tolist()[::-1]):
        sync()
        level_start = time.perf_counter()
        theirs = torch.stack([straightforward_pixel(x0, y, t, sizes[k], p) for p in pixels], dim=-1)
        sync()
        peer += (time.perf_counter() - level_start) * len(all_pixels) / len(pixels)
        # Both against the definition in float64 (untimed): each machine's own rounding.
        exact = torch.stack([straightforward_pixel(x0.double(), y.double(), t, sizes[k], p) for p in pixels], dim=-1)
        mine = machine(y, torch.full((y.shape[0],), t, device=device)).reshape(y.shape[0], shape[0], -1)
        mine = mine[:, :, [i * width + j for i, j in pixels]]
        worst = max(worst, float((mine.double() - exact).abs().max()))
        worst_peer = max(worst_peer, float((theirs.double() - exact).abs().max()))
    case = f"{s['data']} {shape[0]}x{height}x{width} N={s['num_train']} {s['num_samples']} samples {len(sizes)} levels patches {sizes[0]}->{sizes[-1]}"
    scaled = f"timed on {len(pixels)} pixels per level, scaled to {len(all_pixels)}; " if pick else ""
    rows = [
        Row(
            "local_score", case, "s", ours, peer, "straightforward per-pixel ELS", None,
            note=f"{scaled}against the definition in float64: ours within {worst:.1e}, the straightforward "
            f"float32 machine within {worst_peer:.1e}; peak RSS {peak_rss_gib():.2f} GiB",
            extra={"max_abs_diff": worst, "peer_max_abs_diff": worst_peer},
        )
    ]
    if s["image_size"] == 16 and s["num_train"] == 1000:
        rows.append(Row("local_score", case, "s", ours, BUDGET_S, "issue 14 budget", ("<=", 1.0)))
        rows.append(released_settings(x0, device))
    return rows


def released_settings(x0: Tensor, device: torch.device) -> Row:
    """Ours per sample at the released code's own settings, against its time on this machine."""
    grid = make_grid(len(RELEASED_PATCH_SIZES))
    machine = local_score.build(
        tuple(x0.shape[1:]), grid, equivariant=True, padding="circular", patch_sizes=RELEASED_PATCH_SIZES
    ).to(device)
    machine.fit_data(x0)
    start = time.perf_counter()
    make_sampler("ddim").sample(machine, grid, tuple(x0.shape[1:]), list(range(16)), device=device)
    per_sample = (time.perf_counter() - start) / 16
    case = f"digits 1x16x16 N={x0.shape[0]} 16 samples 9 levels patches 15->5 (the released code's settings)"
    return Row("local_score", case, "s/sample", per_sample, RELEASED_S_PER_SAMPLE, "Kamb & Ganguli's release (issue 14)", ("<=", 0.1))
