"""Exact two-nearest-neighbour search pruned by a projected lower bound (CPU).

For any orthonormal basis V (d x k) and centre mu, with z = v - mu, a = V^T z and the residual
norm r = ||z - V a||, Pythagoras and the reverse triangle inequality give

    ||s - x||^2 = ||a_s - a_x||^2 + ||res_s - res_x||^2 >= ||(a_s, r_s) - (a_x, r_x)||^2,

a lower bound that costs a (k + 1)-dimensional product instead of a d-dimensional one. V is
the top-k principal directions of (a subsample of) the training images, where images differ
most, so the bound is tight for images and a handful of training images per sample survive:

1. per block of samples, the bound to every training image (one float32 product);
2. the float32 distances of the ``SEEDS`` images with the smallest bounds: the second
   smallest, divided by (1 - gamma) (float32's relative error of a sum of squares), is at
   least the true second-nearest distance, U;
3. every image whose bound is at most U (plus the bound's rounding margin) is a candidate; no
   other image can be among the two nearest;
4. the candidates' float32 distances, and float64 ones for the candidates within float32's
   error of the row's second: ranked by float64 distance, ties by lower index, they give the
   answer that the float64 search over all images gives.

When the data has no low-dimensional structure (noise), the bound is loose and most images
survive; the search then reports the rows it left, and the caller searches them in full.
"""

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

Product = Callable[[Tensor, Tensor], Tensor]

# k + 1 coordinates and a norm column make 112 float32 columns, a multiple of 16 (faster products).
# On Fashion-MNIST 10k x 60k, k from 78 to 158 all took the same time (fewer candidates vs a wider product).
DIMS = 110
SEEDS = 8
BASIS_IMAGES = 4096
BLOCK_BYTES = 32 * 2**20
# Beyond this mean fraction of training images per sample, the pruned search costs more than the full one.
GIVE_UP_FRACTION = 1 / 16
# Rows per temporary: 1024 x 784 float64 is 6 MB; much larger temporaries are mmap-ed afresh
# each time, and their page faults cost as much as the arithmetic.
CHUNK = 1024


def worth_pruning(samples: Tensor, train: Tensor) -> bool:
    """Whether the bound's product is much smaller than the full one and the basis pays for itself."""
    dim = train.shape[1]
    return train.device.type == "cpu" and dim >= 4 * DIMS and train.shape[0] >= 8192 and samples.shape[0] >= 256


class ProjectedBound:
    """The centre and basis of the bound, fitted on an evenly spaced subsample of the training images."""

    def __init__(self, train: Tensor, dims: int = DIMS) -> None:
        pick = torch.linspace(0, train.shape[0] - 1, min(train.shape[0], BASIS_IMAGES)).long()
        subset = train[pick].to(torch.float64)
        # Any centre and any orthonormal basis give a valid bound; principal directions make it tight.
        self.mean = subset.mean(dim=0)
        centred = subset - self.mean
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        self.basis_rows = vectors[:, -min(dims, train.shape[1]) :].T.contiguous()  # (k, d)
        self.dims = self.basis_rows.shape[0]

    def coordinates(self, rows: Tensor, product: Product) -> Tensor:
        """(n, k + 1) float64: the projection and the residual norm of each row, a chunk at a time."""
        out = torch.empty(rows.shape[0], self.dims + 1, dtype=torch.float64)
        for start in range(0, rows.shape[0], CHUNK):
            z = rows[start : start + CHUNK].to(torch.float64) - self.mean
            a = product(z, self.basis_rows)
            out[start : start + CHUNK, :-1] = a
            out[start : start + CHUNK, -1] = (torch.linalg.vecdot(z, z) - torch.linalg.vecdot(a, a)).clamp_min(0).sqrt()
        return out

    def margin(self, radius: float, dim: int) -> float:
        """A bound on |computed - exact| of a float32 lower bound between coordinates of norm <= radius.

        Terms (u = float32 unit roundoff, all over (2 radius)^2 = 4 radius^2, the largest
        ||c_s|| + ||c_x|| squared): storing float64 coordinates in float32 (3u); the product
        ||c_x||^2 - 2 c_s.c_x plus ||c_s||^2 with k + 3 terms (gamma_(k+3) <= 1.01 (k + 3) u);
        the final addition (u). The residual norm: each float64 a_i = V_i . z errs by at most
        gamma_d ||z|| (||V_i|| = 1), so ||a||^2 by 2 sqrt(k) gamma_d ||z||^2, and r^2 = ||z||^2 -
        ||a||^2 (cancellation included) by at most e = (2 sqrt(k) + 2) (d + 2) u64 ||z||^2; r then
        errs by at most sqrt(e) (|sqrt(p) - sqrt(q)| <= sqrt(|p - q|)), and (r_s - r_x)^2, with
        |r_s - r_x| <= 2 radius, by at most 8 radius sqrt(e) + 4 e. Doubled as a margin.
        """
        u32 = torch.finfo(torch.float32).eps / 2
        u64 = torch.finfo(torch.float64).eps / 2
        rounding = (4 + 1.01 * (self.dims + 3)) * u32 * 4 * radius**2
        residual_sq = (2 * self.dims**0.5 + 2) * (dim + 2) * u64 * radius**2
        residual = 8 * radius * residual_sq**0.5 + 4 * residual_sq
        return 2 * (rounding + residual)


def _augmented_float32(coords: Tensor, sample_side: bool) -> Tensor:
    """One product gives ||c_x||^2 - 2 c_s.c_x: samples as [-2 c, 1], training images as [c, ||c||^2]."""
    width = -(-(coords.shape[1] + 1) // 16) * 16
    out = torch.zeros(coords.shape[0], width, dtype=torch.float32)
    if sample_side:
        out[:, : coords.shape[1]] = -2 * coords
        out[:, coords.shape[1]] = 1
    else:
        out[:, : coords.shape[1]] = coords
        out[:, coords.shape[1]] = torch.linalg.vecdot(coords, coords)
    return out


def _relative_error(dtype: torch.dtype, dim: int) -> float:
    """|computed - exact| <= gamma * exact for a squared distance over ``dim`` coordinates computed
    in ``dtype`` from inputs that ``dtype`` holds exactly.

    Each term (x_j - s_j)^2 is rounded three times (difference, square, its addition) and all
    terms are non-negative, so the summation error, in any order, is relative to the result.
    """
    u = torch.finfo(dtype).eps / 2
    return (dim + 3) * u / (1 - (dim + 3) * u)


def _pair_distances(s: Tensor, x: Tensor, rows: Tensor, cols: Tensor, dtype: torch.dtype) -> Tensor:
    """Squared distances in ``dtype`` of the (rows[i], cols[i]) pairs, a chunk at a time."""
    out = torch.empty(rows.shape[0], dtype=dtype)
    for start in range(0, rows.shape[0], CHUNK):
        chunk = slice(start, start + CHUNK)
        diff = x.index_select(0, cols[chunk]).to(dtype) - s.index_select(0, rows[chunk]).to(dtype)
        out[chunk] = torch.linalg.vecdot(diff, diff)
    return out


def _first_two_per_row(rows: Tensor, keys: Tensor, counts: Tensor) -> Tensor:
    """Positions (R, 2) of each row's two smallest ``keys``, ties by earlier position.

    ``rows`` is sorted; ``counts`` is how many pairs each row has (at least two).
    """
    order = keys.argsort(stable=True)
    order = order[rows[order].argsort(stable=True)]
    first = torch.cumsum(counts, 0) - counts
    return order[torch.stack([first, first + 1], dim=1)]


def pruned_nearest_two(
    s: Tensor, x: Tensor, product: Product, bound: ProjectedBound | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(float64 squared distances (M, 2), indices (M, 2), which rows were answered).

    ``product(a, b)`` computes ``a @ b.T`` in IEEE arithmetic (float32 and float64). Rows not
    answered (the bound did not prune) are left for the full search.
    """
    bound = bound or ProjectedBound(x)
    coords_x = bound.coordinates(x, product)
    coords_s = bound.coordinates(s, product)
    radius = float(max(coords_x.norm(dim=1).max(), coords_s.norm(dim=1).max()))
    margin = bound.margin(radius, x.shape[1])
    train_side = _augmented_float32(coords_x, sample_side=False)
    sample_side = _augmented_float32(coords_s, sample_side=True)
    sample_sq = torch.linalg.vecdot(coords_s, coords_s).float()
    # The screening distances need inputs that float32 holds exactly (float32, float16, bfloat16).
    screen = torch.float64 if torch.float64 in (s.dtype, x.dtype) else torch.float32
    gamma = _relative_error(screen, x.shape[1])
    # A float64 squared distance errs by at most (d + 1) u64 of itself; twice over, doubled.
    float64_slack = 1 + 4 * (x.shape[1] + 1) * torch.finfo(torch.float64).eps / 2
    contender = (1 + gamma) / (1 - gamma) * float64_slack

    best_d = torch.full((s.shape[0], 2), torch.inf, dtype=torch.float64)
    best_i = torch.zeros((s.shape[0], 2), dtype=torch.long)
    answered = torch.zeros(s.shape[0], dtype=torch.bool)
    block = max(1, BLOCK_BYTES // (4 * x.shape[0]))
    seeds = min(SEEDS, x.shape[0])
    for start in range(0, s.shape[0], block):
        sb = s[start : start + block]
        lower = product(sample_side[start : start + block], train_side).add_(sample_sq[start : start + block, None])
        seed_cols = lower.topk(seeds, dim=1, largest=False, sorted=False).indices.reshape(-1)
        seed_rows = torch.arange(sb.shape[0]).repeat_interleave(seeds)
        seed_d = _pair_distances(sb, x, seed_rows, seed_cols, screen).view(-1, seeds)
        # Two images lie within this of the sample, so the second-nearest does too.
        upper = seed_d.kthvalue(2, dim=1).values.double() / (1 - gamma) * float64_slack + margin
        threshold = (upper.float() * (1 + 2 * torch.finfo(torch.float32).eps))[:, None]
        # numpy's flatnonzero is several times faster than torch's nonzero on a sparse mask.
        flat = torch.from_numpy(np.flatnonzero(lower.numpy() <= threshold.numpy()))
        if flat.numel() > GIVE_UP_FRACTION * lower.numel():
            break  # no low-dimensional structure here: the full search is faster for every row left
        cand_rows, cand_cols = flat // x.shape[0], flat % x.shape[0]  # row-major: columns ascending in a row
        counts = torch.bincount(cand_rows, minlength=sb.shape[0])
        if (counts < 2).any():
            break  # only if rounding beat the margin: the full search decides these rows
        # Screening distances of the candidates; float64 only for those within their error of the second.
        approx = _pair_distances(sb, x, cand_rows, cand_cols, screen)
        second = approx[_first_two_per_row(cand_rows, approx, counts)[:, 1]]
        close = (approx.double() <= second.double()[cand_rows] * contender).nonzero(as_tuple=True)[0]
        close_rows, close_cols = cand_rows[close], cand_cols[close]
        exact = _pair_distances(sb, x, close_rows, close_cols, torch.float64)
        picks = _first_two_per_row(close_rows, exact, torch.bincount(close_rows, minlength=sb.shape[0]))
        best_d[start : start + block] = exact[picks]
        best_i[start : start + block] = close_cols[picks]
        answered[start : start + block] = True
    return best_d, best_i, answered
