"""The local polynomial denoiser: our batched fit + sampling against the straightforward one.

The straightforward implementation (as in the paper authors' release) fits, at every
sampling step, one ridge regression per output pixel on the features [1, z, (W z)^p] of the
pixel's training patches, predicts the whole patch and keeps the pixel. Ours fits one
regression per distinct patch position once per level, for the used pixels only, with
batched factorisations (lightning_diff/denoisers/polynomial_patch.py). Both use the same
projections, training noise and ridge, so they compute the same denoiser; the benchmark
reports how far apart they are (max |ours - straightforward| over the timed pixels).

A full straightforward run at 64x64x3 takes hours here (about 4 h by the scaled timing), so at the ``cpu`` size it is
timed on ``peer_pixels`` pixels per level and scaled to all pixels (said in the row's note);
at ``tiny`` it runs in full. A second row compares ours with the 30 s budget of issue 8.
"""

import time
from typing import Any

import torch
from torch import Tensor

from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.denoisers import polynomial_patch
from lightning_diff.denoisers.features import power_features
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.diffusion.samplers import make_sampler

DESCRIPTION = "local polynomial denoiser, fit + 10-level DDIM: batched per patch position vs one regression per pixel per step"
BUDGET_S = 30.0

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(channels=1, image_size=12, num_train=16, num_samples=4, num_levels=4, peer_pixels=None),
    # Issue 8's case: 64x64 RGB, N = 200 training images, 16 samples, the paper's 10 levels.
    "cpu": dict(channels=3, image_size=64, num_train=200, num_samples=16, num_levels=10, peer_pixels=8),
    "gpu": dict(channels=3, image_size=64, num_train=200, num_samples=16, num_levels=10, peer_pixels=8),
}


def straightforward_pixel(
    model: polynomial_patch.PolynomialPatchDenoiser, noisy: Tensor, clean: Tensor, y: Tensor, level: int, pixel: tuple[int, int]
) -> Tensor:
    """One pixel the straightforward way: its patch's features, a ridge fit of the whole patch, the pixel kept."""
    _, height, width = model.data_shape
    size = model.patch_sizes[level]
    i, j = pixel
    r = min(max(i - size // 2, 0), height - size)
    c = min(max(j - size // 2, 0), width - size)
    window = (slice(None), slice(None), slice(r, r + size), slice(c, c + size))
    projection = getattr(model, f"projection_{level}").to(noisy.dtype)
    phi = power_features(noisy[window].reshape(noisy.shape[0], -1), projection, model.power)
    lam = model.ridge * phi.pow(2).sum() / phi.shape[1]
    targets = clean[window].reshape(clean.shape[0], -1)  # the whole patch
    if phi.shape[1] <= phi.shape[0]:
        system = phi.T @ phi
        system.diagonal().add_(lam)
        readout = torch.linalg.solve(system, phi.T @ targets)
    else:
        system = phi @ phi.T
        system.diagonal().add_(lam)
        readout = phi.T @ torch.linalg.solve(system, targets)
    patch = power_features(y[window].reshape(y.shape[0], -1), projection, model.power) @ readout
    return patch.reshape(y.shape[0], -1, size, size)[:, :, i - r, j - c]


def straightforward_level(
    model: polynomial_patch.PolynomialPatchDenoiser, x0: Tensor, y: Tensor, level: int, pixels: list[tuple[int, int]]
) -> Tensor:
    """The straightforward denoiser's output at ``pixels``: (B, C, len(pixels))."""
    noisy, clean = model.training_inputs(x0, level)
    return torch.stack([straightforward_pixel(model, noisy, clean, y, level, p) for p in pixels], dim=-1)


def run(config: Config) -> list[Row]:
    s = config.settings
    shape = (s["channels"], s["image_size"], s["image_size"])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(s["num_train"], *shape, generator=gen) * 2 - 1
    grid = make_grid(s["num_levels"])
    seeds = list(range(s["num_samples"]))
    sampler = make_sampler("ddim")

    start = time.perf_counter()
    model = polynomial_patch.build(shape, grid)
    model.fit_data(x0)
    samples = sampler.sample(model, grid, shape, seeds)
    ours = time.perf_counter() - start
    assert torch.isfinite(samples).all(), "non-finite samples"

    # The straightforward denoiser, level by level, on one batch of noisy inputs: at each sampling
    # step it does this work once, so the sum over levels is its sampling run.
    height, width = shape[1:]
    all_pixels = [(i, j) for i in range(height) for j in range(width)]
    pick = s["peer_pixels"]
    if pick:
        order = torch.randperm(len(all_pixels), generator=gen)[:pick].tolist()
        pixels = [all_pixels[k] for k in order]
    else:
        pixels = all_pixels
    y = torch.randn(s["num_samples"], *shape, generator=gen)
    peer = 0.0
    worst = 0.0
    for level in range(len(grid)):
        t = torch.full((y.shape[0],), float(grid.levels[level]))
        level_start = time.perf_counter()
        theirs = straightforward_level(model, x0, y, level, pixels)
        peer += (time.perf_counter() - level_start) * len(all_pixels) / len(pixels)
        mine = model(y, t).reshape(y.shape[0], shape[0], -1)[:, :, [i * width + j for i, j in pixels]]
        worst = max(worst, float((mine - theirs).abs().max()))
    case = f"{shape[0]}x{height}x{width} N={s['num_train']} {s['num_samples']} samples {s['num_levels']} levels"
    scaled = f"timed on {len(pixels)} pixels per level, scaled to {len(all_pixels)}; " if pick else ""
    rows = [
        Row(
            "polynomial_patch", case, "s", ours, peer, "one regression per pixel per step", None,
            note=f"{scaled}max |ours - straightforward| = {worst:.1e}", extra={"max_abs_diff": worst},
        )
    ]
    if s["image_size"] == 64:
        rows.append(Row("polynomial_patch", case, "s", ours, BUDGET_S, "issue 8 budget", ("<=", 1.0)))
    return rows
