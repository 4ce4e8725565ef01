"""Issue #14, part: Kamb & Ganguli's LS / ELS machines (``denoiser=local_score``)."""

import math
from itertools import product

import pytest
import torch

from conftest import assert_same_samples_as_empirical
from lightning_diff.denoisers import local_score
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.errors import UserError


def fitted(data: torch.Tensor, grid, **knobs) -> local_score.LocalScoreDenoiser:
    machine = local_score.build(tuple(data.shape[1:]), grid, **knobs)
    machine.fit_data(data)
    return machine


def patch(image: torch.Tensor, row: int, col: int, size: int, padding: str) -> torch.Tensor:
    """The size x size patch of (C, H, W) ``image`` centred on (row, col), padded one pixel at a time."""
    channels, height, width = image.shape
    half, values = size // 2, []
    for dr, dc in product(range(-half, half + 1), repeat=2):
        r, c = row + dr, col + dc
        if padding == "circular":
            values.append(image[:, r % height, c % width])
        elif 0 <= r < height and 0 <= c < width:
            values.append(image[:, r, c])
        else:
            values.append(torch.zeros(channels, dtype=image.dtype))
    return torch.stack(values, dim=1).reshape(-1)


def straightforward(data: torch.Tensor, y: torch.Tensor, t: float, size: int, equivariant: bool, padding: str):
    """Pixel by pixel, candidate by candidate, in float64: the definition, not the algorithm."""
    data, y = data.double(), y.double()
    _, channels, height, width = data.shape
    half, a = size // 2, math.sqrt(1 - t)

    def inside(i: int, extent: int) -> bool:
        return half <= i <= extent - 1 - half

    out = torch.zeros_like(y)
    for b, row, col in product(range(y.shape[0]), range(height), range(width)):
        query = patch(y[b], row, col, size, padding)
        if not equivariant:
            positions = [(row, col)]
        elif padding == "circular":
            positions = [(r, c) for r in range(height) for c in range(width) if inside(r, height) and inside(c, width)]
        else:  # the same zero padding: an inside row (column) matches any inside one, an edge row only itself
            rows = [r for r in range(height) if inside(r, height)] if inside(row, height) else [row]
            cols = [c for c in range(width) if inside(c, width)] if inside(col, width) else [col]
            positions = list(product(rows, cols))
        candidates = [(patch(image, r, c, size, padding), image[:, r, c]) for image in data for r, c in positions]
        logits = torch.stack([-(query - a * phi).pow(2).sum() / (2 * t) for phi, _ in candidates])
        weights = torch.softmax(logits, dim=0)
        out[b, :, row, col] = sum(w * centre for w, (_, centre) in zip(weights, candidates))
    return out


@pytest.mark.parametrize(("equivariant", "padding"), [(False, "zeros"), (False, "circular"), (True, "circular"), (True, "zeros")])
def test_every_machine_computes_its_definition(equivariant, padding):
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(4, 2, 5, 6, generator=gen) * 2 - 1
    grid = make_grid(2, t_min=0.2, t_max=0.6)
    machine = fitted(data, grid, equivariant=equivariant, padding=padding, patch_sizes=[5, 3])
    y = torch.randn(2, 2, 5, 6, generator=gen)
    for t, size in ((0.6, 5), (0.2, 3)):
        got = machine(y, torch.full((2,), t))
        expected = straightforward(data, y, t, size, equivariant, padding)
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("equivariant", "padding"), [(False, "zeros"), (True, "zeros")])
def test_full_coverage_patches_are_the_empirical_denoiser_same_samples(equivariant, padding):
    gen = torch.Generator().manual_seed(1)
    data = torch.rand(30, 1, 5, 5, generator=gen) * 2 - 1
    grid = make_grid(6)
    machine = fitted(data, grid, equivariant=equivariant, padding=padding, patch_sizes=9)  # 2 * 5 - 1
    assert_same_samples_as_empirical(machine, data, grid)


def test_ls_at_the_lowest_noise_level_copies_each_pixel_from_the_same_position_of_some_image():
    gen = torch.Generator().manual_seed(2)
    data = torch.rand(12, 1, 8, 8, generator=gen) * 2 - 1
    grid = make_grid(2, t_min=1e-4, t_max=0.5)
    machine = fitted(data, grid, equivariant=False, padding="zeros", patch_sizes=3)
    y = torch.randn(3, 1, 8, 8, generator=gen)
    out = machine(y, torch.full((3,), 1e-4))
    gaps = (out.unsqueeze(1) - data.unsqueeze(0)).abs()  # (B, N, 1, 8, 8)
    assert float(gaps.min(dim=1).values.max()) < 1e-4  # every pixel is some image's pixel there
    sources = gaps.argmin(dim=1)
    assert all(len(torch.unique(sources[b])) > 1 for b in range(3))  # a mosaic, not one copied image


def test_els_with_circular_padding_is_translation_equivariant():
    gen = torch.Generator().manual_seed(3)
    data = torch.rand(10, 3, 8, 8, generator=gen) * 2 - 1
    grid = make_grid(3)
    machine = fitted(data, grid, equivariant=True, padding="circular", patch_sizes=[7, 5, 3])
    y = torch.randn(4, 3, 8, 8, generator=gen)
    for t in grid.levels.tolist():
        levels = torch.full((4,), t)
        shifted = machine(torch.roll(y, shifts=(2, 5), dims=(2, 3)), levels)
        torch.testing.assert_close(shifted, torch.roll(machine(y, levels), shifts=(2, 5), dims=(2, 3)), atol=1e-5, rtol=0)


def test_bad_patch_sizes_and_knobs_are_named():
    grid, shape = make_grid(3), (1, 8, 8)
    with pytest.raises(UserError, match=r"patch_sizes \[4\] are not odd"):
        local_score.build(shape, grid, patch_sizes=[5, 4, 3])
    with pytest.raises(UserError, match="has 2 entries but the grid has 3 levels"):
        local_score.build(shape, grid, patch_sizes=[5, 3])
    with pytest.raises(UserError, match=r"exceed 2 \* side - 1 = 15"):
        local_score.build(shape, grid, patch_sizes=17, padding="zeros")
    with pytest.raises(UserError, match="must be <= 8"):
        local_score.build(shape, grid, patch_sizes=9, padding="circular")
    with pytest.raises(UserError, match="padding='reflect' is not available"):
        local_score.build(shape, grid, padding="reflect")
    with pytest.raises(UserError, match="closed form only"):
        local_score.build(shape, grid, fit="sgd")
    assert local_score.build(shape, grid, padding="zeros").patch_sizes == [3, 9, 15]  # grid order: ascending t
    assert local_score.build(shape, grid, padding="circular").patch_sizes == [3, 5, 7]


def same_position_definition(data: torch.Tensor, y: torch.Tensor, t: float, size: int, padding: str) -> torch.Tensor:
    """LS in float64 from distances: per pixel, the softmax over the training images of
    -||y_P(x) - a x_P(x)||^2 / 2t of their patches there (padded as ``padding``)."""
    data, y = data.double(), y.double()
    half, a = size // 2, math.sqrt(1 - t)
    mode = "circular" if padding == "circular" else "constant"

    def patches(images: torch.Tensor) -> torch.Tensor:  # (n, HW, C P^2)
        return torch.nn.functional.unfold(torch.nn.functional.pad(images, (half,) * 4, mode=mode), size).transpose(1, 2)

    queries, candidates = patches(y), patches(data)
    logits = -(queries[:, None] - a * candidates[None]).pow(2).sum(dim=-1) / (2 * t)  # (B, N, HW)
    weights = torch.softmax(logits, dim=1)
    return torch.einsum("bnp,ncp->bcp", weights, data.flatten(2)).reshape(y.shape)


@pytest.mark.parametrize(("side", "channels", "padding"), [(8, 1, "zeros"), (8, 1, "circular"), (12, 1, "zeros"), (7, 3, "circular")])
def test_ls_window_sums_equal_the_distance_definition_for_every_patch_size(side, channels, padding):
    gen = torch.Generator().manual_seed(side + channels)
    data = torch.rand(20, channels, side, side, generator=gen) * 2 - 1
    sizes = [2 * side - 1, 7, 3, 1]  # highest noise first; 2 side - 1 covers the image from every pixel
    grid = make_grid(4, levels=[1e-3, 0.05, 0.4, 0.95])
    machine = fitted(data, grid, equivariant=False, padding=padding, patch_sizes=sizes)
    y = torch.randn(3, channels, side, side, generator=gen)
    for t, size in zip(grid.levels.tolist(), reversed(sizes)):
        got = machine(y * math.sqrt(t) + math.sqrt(1 - t) * data[:3], torch.full((3,), t))
        expected = same_position_definition(data, y * math.sqrt(t) + math.sqrt(1 - t) * data[:3], t, size, padding)
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_zero_padded_els_with_patches_covering_the_image_is_ls_at_every_pixel():
    # 7x7 with P = 13: every pixel is its own padding class, so its candidates are LS's (the
    # machine computes them by window sums); checked against the per-candidate definition.
    gen = torch.Generator().manual_seed(4)
    data = torch.rand(5, 1, 7, 7, generator=gen) * 2 - 1
    grid = make_grid(1, levels=[0.3])
    machine = fitted(data, grid, equivariant=True, padding="zeros", patch_sizes=13)
    y = torch.randn(2, 1, 7, 7, generator=gen)
    expected = straightforward(data, y, 0.3, 13, True, "zeros")
    torch.testing.assert_close(machine(y, torch.full((2,), 0.3)).double(), expected, atol=1e-5, rtol=0)


def test_els_orders_a_batch_of_several_query_blocks_and_passes_over_negligible_candidates():
    # 256 samples of 8x8: 16,384 queries, four blocks (QUERY_ROWS), so exact_posterior orders
    # them along the candidates' leading direction; at t = 1e-3 far blocks of candidates are skipped.
    gen = torch.Generator().manual_seed(5)
    data = (torch.rand(20, 1, 1, 1, generator=gen) * 2 - 1) + 0.2 * torch.randn(20, 1, 8, 8, generator=gen)
    t = 1e-3
    machine = fitted(data, make_grid(2, t_min=t, t_max=0.5), equivariant=True, padding="circular", patch_sizes=3)
    picked = data[torch.randint(0, 20, (256,), generator=gen)]
    y = math.sqrt(1 - t) * picked + math.sqrt(t) * torch.randn(picked.shape, generator=gen)
    together = machine(y, torch.full((256,), t))
    assert machine.last_products[t] < 0.8
    apart = torch.cat([machine(part, torch.full((32,), t)) for part in y.split(32)])
    assert machine.last_products[t] == 1.0  # 2,048 queries: one block, nothing to order
    torch.testing.assert_close(together, apart, atol=1e-6, rtol=0)
