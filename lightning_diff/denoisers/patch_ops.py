"""The array work of the local polynomial denoiser (:mod:`lightning_diff.denoisers.polynomial_patch`):
where the patches sit, their random-feature projections for all positions at once (direct
convolution or a DFT route, whichever costs less), windowed inner products for the dual
kernels, and the regularised factorisations of many small systems."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diff.errors import UserError

# Largest intermediate tensor (elements) of a block of positions or a DFT chunk: 32 MB in float32.
# Larger blocks run slower: glibc serves allocations above 32 MB by fresh mmaps, whose page
# faults cost as much system time as the arithmetic (measured: 6.5 s vs 2.3 s of 16 s).
BLOCK_ELEMENTS = 1 << 23
# Per flop, the DFT route runs about 3x slower than conv2d (measured on a 2-core EPYC: its
# permutes and small inverse products are memory-bound, conv2d runs near the matmul peak).
SPECTRAL_SLOWDOWN = 3.0


def patch_starts(extent: int, patch_size: int) -> Tensor:
    """Where the patch of each pixel starts along an axis: centred, slid inwards at the border."""
    return (torch.arange(extent) - patch_size // 2).clamp(0, extent - patch_size)


def inverse_rfft_matrix(out_w: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The inverse of ``rfft`` of length ``width`` at the points b < out_w, as a real (out_w, 2K)
    map from [Re of the K = width // 2 + 1 half-spectrum entries, then their Im] to real values;
    it carries the Hermitian weights and the 1 / width normalisation."""
    half = width // 2 + 1
    weight = torch.full((half,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    angle = torch.outer(torch.arange(out_w, dtype=torch.float64), torch.arange(half, dtype=torch.float64))
    angle *= 2 * math.pi / width
    inverse = torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1) * (weight.repeat(2) / width)
    return inverse.to(device=device, dtype=dtype)


def projections_spectral(images: Tensor, filters: Tensor) -> Tensor:
    """Valid cross-correlations through the DFT along the columns and sums along the rows.

    Per column frequency, the sum over the channels and the P filter rows is one complex
    matrix product of row windows (n x C P) with the filters' spectra (C P x F), so the work is
    compute-bound; a valid correlation never wraps, so the DFT has the image's own length.
    """
    n, channels, height, width = images.shape
    count, size = filters.shape[0], filters.shape[-1]
    out_h, out_w = height - size + 1, width - size + 1
    half = width // 2 + 1
    # Correlation, not convolution: the filters' spectra enter conjugated. As a real product,
    # [Re x, Im x] (1 x 2CP) times [[Re w, Im w], [-Im w, Re w]] (2CP x 2F) is [Re, Im] of x w.
    spec_filters = torch.view_as_real(torch.fft.rfft(filters, n=width, dim=-1).conj().resolve_conj())
    real, imag = spec_filters.permute(3, 1, 2, 0, 4).reshape(half, channels * size, count, 2).unbind(-1)
    mixing = torch.cat([torch.cat([real, imag], dim=2), torch.cat([-imag, real], dim=2)], dim=1)
    inverse = inverse_rfft_matrix(out_w, width, images.dtype, images.device)
    out = images.new_empty(out_h, out_w, n, count)
    step = max(1, BLOCK_ELEMENTS // (half * out_h * 2 * max(count, channels * size)))
    for i0 in range(0, n, step):
        chunk = images[i0 : i0 + step]
        ni = chunk.shape[0]
        spectrum = torch.view_as_real(torch.fft.rfft(chunk, dim=-1))  # (ni, C, H, K, 2)
        windows = spectrum.unfold(2, size, 1)  # (ni, C, out_h, K, 2, P)
        rows = windows.permute(3, 2, 0, 4, 1, 5).reshape(half, out_h * ni, 2 * channels * size)
        mixed = torch.bmm(rows, mixing)  # (K, out_h ni, [Re F, Im F])
        parts = mixed.reshape(half, out_h * ni, 2, count).permute(2, 0, 1, 3).reshape(2 * half, -1)
        out[:, :, i0 : i0 + ni] = (inverse @ parts).reshape(out_w, out_h, ni, count).transpose(0, 1)
    return out.reshape(out_h * out_w, n, count)


def projections_direct(images: Tensor, filters: Tensor) -> Tensor:
    n, _, height, width = images.shape
    count, size = filters.shape[0], filters.shape[-1]
    positions = (height - size + 1) * (width - size + 1)
    out = images.new_empty(positions, n, count)
    step = max(1, BLOCK_ELEMENTS // (count * positions))
    for i0 in range(0, n, step):
        corr = F.conv2d(images[i0 : i0 + step], filters)  # (ni, count, H - P + 1, W - P + 1)
        out[:, i0 : i0 + step] = corr.flatten(2).permute(2, 0, 1)
    return out


def uses_spectral(channels: int, patch_size: int, height: int, width: int) -> bool:
    """Whether the DFT route is estimated cheaper than the direct correlation."""
    out_h, out_w = height - patch_size + 1, width - patch_size + 1
    half = width // 2 + 1
    spectral = SPECTRAL_SLOWDOWN * (8 * channels * patch_size * out_h * half + 4 * half * out_h * out_w)
    direct = 2 * channels * patch_size**2 * out_h * out_w
    return spectral < direct


def patch_projections(images: Tensor, filters: Tensor) -> Tensor:
    """<filters[f], patch at position q of image i> for every patch position q: (Q, n, F).

    ``images`` is (n, C, H, W) and ``filters`` (F, C, P, P); the Q = (H - P + 1)(W - P + 1)
    positions are in row-major order; patches and filters flatten as (C, P, P).
    """
    _, channels, height, width = images.shape
    if uses_spectral(channels, filters.shape[-1], height, width):
        return projections_spectral(images, filters)
    return projections_direct(images, filters)


def patches(images: Tensor, patch_size: int, rows: range) -> Tensor:
    """The flattened (C, P, P) patches at position rows ``rows``, all columns: (len(rows) * (W - P + 1), n, C P^2)."""
    size = patch_size
    windows = images[:, :, rows.start : rows.stop + size - 1].unfold(2, size, 1).unfold(3, size, 1)
    n, channels, count, out_w = windows.shape[:4]
    return windows.permute(2, 3, 0, 1, 4, 5).reshape(count * out_w, n, channels * size * size)


def window_inner_products(a: Tensor, b: Tensor, patch_size: int, rows: range) -> Tensor:
    """z_i . z_j of the (C, P, P) patches of a_i and b_j at position rows ``rows``: (len(rows) * (W - P + 1), n_a, n_b).

    Inner products of the P-long column strips under each position row at every column are
    one batched matrix product; a band of ones then sums P neighbouring columns. Per pair and
    position row that is 2 W (C P + W - P + 1) flops instead of 2 (W - P + 1) C P^2.
    """
    size = patch_size
    channels, width = a.shape[1], a.shape[3]
    out_w = width - size + 1
    count = len(rows)

    def column_strips(images: Tensor) -> Tensor:
        strips = images[:, :, rows.start : rows.stop + size - 1].unfold(2, size, 1)  # (n, C, rows, W, P)
        return strips.permute(2, 3, 0, 1, 4).reshape(count * width, images.shape[0], channels * size)

    per_column = torch.bmm(column_strips(a), column_strips(b).transpose(1, 2))
    offset = torch.arange(width, device=a.device) - torch.arange(out_w, device=a.device)[:, None]
    band = ((offset >= 0) & (offset < size)).to(a.dtype)  # (W - P + 1, W): column s is in window l
    summed = band @ per_column.reshape(count, width, a.shape[0] * b.shape[0])
    return summed.reshape(count * out_w, a.shape[0], b.shape[0])


def axis_runs(extent: int, patch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per patch position along an axis: how many pixels it serves, the first of them, and
    where its centre pixel is among them. Starts are non-decreasing in the pixel, so each
    position serves a run of pixels, and position a is the patch of its centre a + P // 2."""
    positions = extent - patch_size + 1
    counts = torch.bincount(patch_starts(extent, patch_size), minlength=positions)
    first = torch.cumsum(counts, 0) - counts
    return counts, first, torch.arange(positions) + patch_size // 2 - first


def position_groups(height: int, width: int, patch_size: int, rows: range) -> list[tuple[Tensor | None, Tensor]]:
    """The pixels the patch positions in position rows ``rows`` serve, in batches of equal size.

    Returns (positions, pixels) pairs: ``positions`` (G,) indexes the block's positions in
    row-major order and ``pixels`` (G, r) the r pixels (row-major over the image) each serves.
    The first pair is every position with its centre pixel (``positions`` None: all, in order,
    so nothing needs gathering); the rest are the border positions with their other pixels,
    grouped so that the pixels sit alike around each position.
    """
    counts_x, first_x, centre_x = axis_runs(height, patch_size)
    counts_y, first_y, centre_y = axis_runs(width, patch_size)
    out_w = width - patch_size + 1
    block_x = torch.arange(rows.start, rows.stop)
    centres = (block_x + patch_size // 2)[:, None] * width + torch.arange(out_w) + patch_size // 2
    groups: list[tuple[Tensor | None, Tensor]] = [(None, centres.reshape(-1, 1))]
    kinds_x = torch.stack([counts_x[block_x], centre_x[block_x]], dim=1)
    kinds_y = torch.stack([counts_y, centre_y], dim=1)
    for cx, ox in torch.unique(kinds_x, dim=0).tolist():
        a = block_x[(kinds_x == torch.tensor([cx, ox])).all(dim=1)]
        for cy, oy in torch.unique(kinds_y, dim=0).tolist():
            if cx * cy == 1:
                continue
            b = (kinds_y == torch.tensor([cy, oy])).all(dim=1).nonzero(as_tuple=True)[0]
            positions = ((a - rows.start)[:, None] * out_w + b[None, :]).reshape(-1)
            pixel_rows = first_x[a][:, None] + torch.arange(cx)  # (A, cx)
            pixel_cols = first_y[b][:, None] + torch.arange(cy)  # (B, cy)
            pixels = (pixel_rows[:, None, :, None] * width + pixel_cols[None, :, None, :]).reshape(-1, cx * cy)
            others = [k for k in range(cx * cy) if k != ox * cy + oy]
            groups.append((positions, pixels[:, others]))
    return groups


def take(values: Tensor, positions: Tensor | None) -> Tensor:
    return values if positions is None else values[positions]


def regularised_factor(matrix: Tensor, ridge: float, num_features: int) -> Tensor:
    """Cholesky factor of A + lam I for symmetric PSD A, batched, with lam = ridge * trace(A) / num_features.

    For a Gram Phi^T Phi or a kernel Phi Phi^T the trace is ||Phi||_F^2, so this is the relative
    penalty of :func:`~lightning_diff.denoisers.ridge.ridge_solve` in either form. Cholesky, not
    LU: on this machine's torch/MKL build batched LU returns invalid pivots once
    ``torch.set_num_threads`` has been called. A system that rounding made indefinite is
    factored in float64.
    """
    lam = ridge * matrix.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-30) / num_features
    system = matrix.clone()
    system.diagonal(dim1=-2, dim2=-1).add_(lam[:, None])
    factor, info = torch.linalg.cholesky_ex(system)
    if bool((info != 0).any()):
        factor, info = torch.linalg.cholesky_ex(system.double())
        if bool((info != 0).any()):
            raise UserError(
                f"denoiser.ridge={ridge} is too small for the fitted kernels to stay positive definite in "
                f"{matrix.dtype}; use a larger ridge (e.g. {ridge * 10:g})"
            )
    return factor
