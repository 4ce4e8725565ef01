"""Issue #14, part: Lukoianov et al.'s data-driven locality denoiser (``denoiser=pca_locality``)."""

import math

import pytest
import torch

from conftest import assert_same_samples_as_empirical
from lightning_diff.denoisers import local_score, pca_locality
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.errors import UserError


def fitted(data: torch.Tensor, grid, **knobs) -> pca_locality.PCALocalityDenoiser:
    machine = pca_locality.build(tuple(data.shape[1:]), grid, **knobs)
    machine.fit_data(data)
    return machine


def straightforward(data: torch.Tensor, y: torch.Tensor, t: float, threshold: float, temperature: float) -> torch.Tensor:
    """The definition in float64, output pixel by output pixel, from the covariance up."""
    x = data.reshape(data.shape[0], -1).double()
    flat = y.reshape(y.shape[0], -1).double()
    dim, a, sigma2 = x.shape[1], math.sqrt(1 - t), t / (1 - t)
    covariance = (x - x.mean(0)).T @ (x - x.mean(0)) / x.shape[0]
    wiener = covariance @ torch.linalg.inv(covariance + sigma2 * torch.eye(dim, dtype=torch.float64))
    normalised = wiener / wiener.diagonal()[:, None]
    mask = (normalised.abs() >= threshold * normalised.abs().max()).double() if threshold > 0 else normalised
    out = torch.zeros_like(flat)
    for b in range(flat.shape[0]):
        for m in range(dim):
            distances = torch.stack([(mask[:, m] * (flat[b] - a * image).pow(2)).sum() for image in x])
            weights = torch.softmax(-distances / (2 * t * temperature), dim=0)
            out[b, m] = (weights * x[:, m]).sum()
    return out.reshape(y.shape)


@pytest.mark.parametrize(("threshold", "temperature"), [(0.02, 1.0), (0.3, 1.0), (0.0, 1.0), (0.02, 0.5)])
def test_the_machine_computes_its_definition(threshold, temperature):
    gen = torch.Generator().manual_seed(0)
    data = torch.nn.functional.avg_pool2d(torch.rand(40, 2, 6, 7, generator=gen), 3, 1, 1)  # correlated pixels
    machine = fitted(data, make_grid(3), threshold=threshold, temperature=temperature)
    y = torch.randn(3, 2, 6, 7, generator=gen)
    for t in (0.9, 0.2, 0.01):
        got = machine(y, torch.full((3,), t))
        torch.testing.assert_close(got.double(), straightforward(data, y, t, threshold, temperature), atol=1e-5, rtol=0)


def test_a_mask_that_keeps_every_pixel_is_the_empirical_denoiser_same_samples():
    gen = torch.Generator().manual_seed(1)
    data = torch.rand(30, 1, 5, 5, generator=gen) * 2 - 1
    grid = make_grid(6)
    machine = fitted(data, grid, threshold=1e-12)
    assert_same_samples_as_empirical(machine, data, grid)


def test_on_pixels_without_correlation_the_mask_is_each_pixel_alone_so_it_is_ls_with_1x1_patches():
    # Independent pixels of unequal variance: the Wiener filter is (nearly) diagonal, so a
    # threshold above the sample correlations leaves each output pixel only itself.
    gen = torch.Generator().manual_seed(2)
    data = torch.randn(4000, 1, 4, 4, generator=gen) * torch.linspace(0.2, 1.0, 16).reshape(1, 1, 4, 4)
    grid = make_grid(4)
    machine = fitted(data, grid, threshold=0.5)
    for t in grid.levels.tolist():
        assert torch.equal(machine.mask(t), torch.eye(16))
    ls = local_score.build((1, 4, 4), grid, equivariant=False, padding="zeros", patch_sizes=1)
    ls.fit_data(data)
    y = torch.randn(5, 1, 4, 4, generator=gen)
    for t in grid.levels.tolist():
        levels = torch.full((5,), t)
        torch.testing.assert_close(machine(y, levels), ls(y, levels), atol=1e-5, rtol=0)


def test_masks_widen_with_the_noise_level():
    # Smooth images: at high noise the Wiener filter reads far (few components pass), at low
    # noise only the pixel itself and its neighbours.
    gen = torch.Generator().manual_seed(3)
    data = torch.nn.functional.avg_pool2d(torch.rand(500, 1, 10, 10, generator=gen), 5, 1, 2, count_include_pad=False)
    grid = make_grid(5)
    machine = fitted(data, grid, threshold=0.1)
    sizes = [float(machine.mask(t).sum(0).mean()) for t in grid.levels.tolist()]
    assert sizes == sorted(sizes) and sizes[-1] > 2 * sizes[0]


def test_bad_knobs_are_named():
    grid, shape = make_grid(3), (1, 8, 8)
    with pytest.raises(UserError, match=r"threshold=1.5 must lie in \[0, 1\)"):
        pca_locality.build(shape, grid, threshold=1.5)
    with pytest.raises(UserError, match="threshold=-0.1"):
        pca_locality.build(shape, grid, threshold=-0.1)
    with pytest.raises(UserError, match="temperature=0 must be > 0"):
        pca_locality.build(shape, grid, temperature=0)
    with pytest.raises(UserError, match="closed form only"):
        pca_locality.build(shape, grid, fit="sgd")
    with pytest.raises(UserError, match="conditioning='blind' is not available for pca_locality"):
        pca_locality.build(shape, grid, conditioning="blind")
    with pytest.raises(UserError, match="no training data"):
        pca_locality.build(shape, grid)(torch.zeros(1, *shape), torch.full((1,), 0.5))
