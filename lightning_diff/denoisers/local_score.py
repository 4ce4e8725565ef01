"""Kamb & Ganguli's local score machines (ICML 2025): the analytic model of a convolutional denoiser.

At noise level t with patch size P (odd), pixel x of the output is the posterior mean of the
centre pixels of clean training patches phi given the noisy patch y_P(x) around x:

    D(y, t)(x) = sum_phi w_phi(x) phi(0),   w_phi(x) = softmax_phi( -||y_P(x) - a phi||^2 / (2t) ),

with a = sqrt(1 - t) (this project's t is the noise variance). The candidate patches phi:

- ``equivariant=false`` (LS): the patch at the same position x of every training image;
- ``equivariant=true`` (ELS, what a convolution sees): the patches of every training image at
  every position, with the CNN's boundary handling: ``padding=circular`` wraps the noisy patch
  and compares it with every fully-inside training patch; ``padding=zeros`` (their
  "boundary-broken" ELS) pads with zeros, so a pixel whose patch crosses an edge only matches
  training patches at the same distance from that edge (positions with the same padding).

||y_P - a phi||^2 = ||y_P||^2 - 2a <y_P, phi> + a^2 ||phi||^2 and the first term is the same for
every candidate, so the logits are (a <y_P, phi> - a^2 ||phi||^2 / 2) / t. The posterior is
exact: all candidates, a running log-sum-exp over chunks of them (as the empirical denoiser).
With ``equivariant=false``, ``padding=zeros`` and P >= 2 side - 1 every patch covers the whole
image, so LS is the empirical (Bayes-optimal) denoiser.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diff.denoisers.closed_form import ClosedFormDenoiser
from lightning_diff.denoisers.contract import check_choice, check_only_fit
from lightning_diff.denoisers.registry import family
from lightning_diff.denoisers.training_set import LOG2_E, softmax_step
from lightning_diff.diffusion.grids import NoiseGrid, level_index
from lightning_diff.errors import UserError

PADDINGS = ("circular", "zeros")
# Largest logits block (elements) of one chunk of candidates: 4 MB in float32 (measured on 2
# cores at the released code's settings, 16 samples: 0.24 s per sample with 0.5M- or 1M-element
# blocks, 0.25 with 2M, 0.33 with 4M: the block stays nearer the caches).
BLOCK_ELEMENTS = 1 << 20
# Queries (pixels x samples) handled at once: more would shrink the candidate chunks below 256 and
# rescale a larger accumulator after each, a cost quadratic in the batch (issue 23's validation of
# 500 images in one batch; docs/performance.md, "A closed-form machine's run").
QUERY_ROWS = BLOCK_ELEMENTS // 256
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
# Largest worst-case bound on a float32 logit's rounding (logit_rounding) accepted. The bound
# overstates the error the output sees 10-60x (16x16, N = 1,000: bounds 1e-5 to 4e-5 at t >= 0.11
# came with output errors <= 1.5e-6 against float64; at t = 1e-3 a bound of 1.4e-3 with 2.2e-5),
# so 1e-4 keeps the output within 1e-5 of float64 and float64 for the lowest levels only.
LOGIT_ROUNDING = 1e-4


def default_patch_sizes(largest: int, num_levels: int) -> list[int]:
    """Uncalibrated sizes, highest noise first: odd, from ``largest`` (the largest the machine
    allows) down to 3 (or ``largest`` if smaller), evenly spaced."""
    largest = largest if largest % 2 else largest - 1
    if num_levels == 1 or largest <= 3:
        return [largest]
    sizes = [largest + (3 - largest) * k / (num_levels - 1) for k in range(num_levels)]
    return [2 * round((size - 1) / 2) + 1 for size in sizes]


def largest_patch(shape: tuple[int, int, int], equivariant: bool, padding: str) -> int:
    """2 side - 1 (from every pixel such a patch covers the image), or the side itself for circular
    ELS, whose candidates are the training patches that fit inside the image."""
    side = min(shape[1:])
    return side if equivariant and padding == "circular" else 2 * side - 1


def checked_patch_sizes(
    patch_sizes: int | list[int] | None, shape: tuple[int, int, int], num_levels: int, largest: int
) -> list[int]:
    """The sizes per level, highest noise first, or one :class:`UserError` naming what is wrong."""
    side = min(shape[1:])
    if patch_sizes is None:
        return default_patch_sizes(largest, num_levels)
    sizes = [patch_sizes] * num_levels if isinstance(patch_sizes, int) else list(patch_sizes)
    if len(sizes) != num_levels:
        raise UserError(
            f"denoiser.patch_sizes has {len(sizes)} entries but the grid has {num_levels} levels; give one odd "
            "size, or one per level (highest noise first)"
        )
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1 or s % 2 == 0]
    if bad:
        raise UserError(f"denoiser.patch_sizes {bad} are not odd positive integers: a patch is centred on its pixel")
    too_large = [s for s in sizes if s > 2 * side - 1]
    if too_large:
        raise UserError(
            f"denoiser.patch_sizes {too_large} exceed 2 * side - 1 = {2 * side - 1} for {shape[1]}x{shape[2]} images: "
            "from every pixel such a patch already covers the image, a larger one only adds padding"
        )
    return sizes


def box_sum(maps: Tensor, size: int, padding: str) -> Tensor:
    """Sum of (M, 1, H, W) over the size x size window centred on each pixel (padded as ``padding``)."""
    half = size // 2
    padded = F.pad(maps, (half, half, half, half), mode="circular" if padding == "circular" else "constant")
    return F.avg_pool2d(padded, size, stride=1, divisor_override=1)


def softmax_centres(queries: Tensor, candidates: Tensor, centres: Tensor, a: float, t: float) -> Tensor:
    """sum_m softmax_m(-||q - a c_m||^2 / (2t)) centre_m for queries (B, G, D), candidates (M, D)
    and their centre pixels (M, C): (B, G, C), chunked over M.

    Up to a term that is the same for every candidate the logit is (a q.c - a^2 |c|^2 / 2) / t,
    and the same holds after moving both to the candidates' mean m (q - a m, c - m), which keeps
    the terms small on real images (a background shared by most patches). Memory traffic and
    the exponentials are the cost: the scalars (and log2 e) are folded into the operands so one
    ``addmm`` writes the logits in base 2, ``exp2`` is taken in place (see ``LOG2_E``), and a
    column of ones beside the centres gives the softmax's normaliser in the same product as the
    mean. The terms still grow like |c|^2 / t, so at low noise their float32 rounding would reach
    the output; where its bound exceeds ``LOGIT_ROUNDING`` the logits are formed in float64 and
    only their differences from the running maximum go to float32.
    """
    batch, groups, dim = queries.shape
    mean = candidates.mean(dim=0)
    queries = queries.reshape(-1, dim) - a * mean
    candidates = candidates - mean
    norms = candidates.pow(2).sum(dim=1)
    # Decided on every query at once, so a sample's output does not depend on the block it falls in.
    exact = logit_rounding(queries, norms, a, t) > LOGIT_ROUNDING
    precision = torch.float64 if exact else queries.dtype
    offsets = norms.to(precision) * (-0.5 * LOG2_E * a * a / t)
    operands = candidates.to(precision)
    weighted = torch.cat([centres, torch.ones(centres.shape[0], 1, dtype=centres.dtype, device=centres.device)], 1)
    out = torch.cat([
        posterior_block(queries[start : start + QUERY_ROWS].to(precision) * (LOG2_E * a / t), operands, offsets, weighted)
        for start in range(0, queries.shape[0], QUERY_ROWS)
    ])
    return out.reshape(batch, groups, -1)


def posterior_block(scaled: Tensor, operands: Tensor, offsets: Tensor, weighted: Tensor) -> Tensor:
    """The posterior means of one block of queries (already scaled to base-2 logits), chunked over
    the candidates with a running maximum."""
    chunk = max(1, BLOCK_ELEMENTS // scaled.shape[0])
    running_max = torch.full((scaled.shape[0], 1), -math.inf, dtype=scaled.dtype, device=scaled.device)
    acc = torch.zeros(scaled.shape[0], weighted.shape[1], dtype=weighted.dtype, device=scaled.device)
    for start in range(0, operands.shape[0], chunk):
        block = slice(start, start + chunk)
        logits = torch.addmm(offsets[block], scaled, operands[block].T)
        new_max = torch.maximum(running_max, logits.amax(dim=1, keepdim=True))
        shifted = logits.sub_(new_max).to(weighted.dtype)
        acc = acc * torch.exp2(running_max - new_max).to(acc.dtype) + shifted.exp2_() @ weighted[block]
        running_max = new_max
    return acc[:, :-1] / acc[:, -1:]


def logit_rounding(queries: Tensor, norms: Tensor, a: float, t: float) -> float:
    """Bound on the float32 rounding error of the largest logit, eps (a |q| |c| + a^2 |c|^2 / 2) / t."""
    largest_query = float(queries.norm(dim=-1).max())
    largest_candidate = float(norms.max().sqrt())
    return FLOAT32_EPS * (a * largest_query * largest_candidate + 0.5 * a * a * largest_candidate**2) / t


class LocalScoreDenoiser(ClosedFormDenoiser):
    """LS / ELS machine with one patch size per grid level (see the module docstring).

    Args:
        data_shape: (C, H, W).
        grid: the noise grid; ``patch_sizes`` lists one odd size per level, highest noise first.
    """

    def __init__(
        self, data_shape: tuple[int, ...], grid: NoiseGrid, patch_sizes: list[int], equivariant: bool, padding: str
    ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.equivariant = equivariant
        self.padding = padding
        self.patch_sizes = list(reversed(patch_sizes))  # grid order: ascending t
        self.register_buffer("levels", grid.levels.clone().float())
        self.register_buffer("data", torch.zeros(0, *self.data_shape))

    def _fit(self, x0: Tensor) -> None:
        self.data = x0.reshape(x0.shape[0], *self.data_shape).float().to(self.data.device)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        if self.data.shape[0] == 0:
            raise UserError("the local score machine has no training data: fit it (denoiser.fit=closed_form) first")
        index = level_index(self.levels, t)
        out = torch.empty_like(y)
        for k in torch.unique(index).tolist():
            rows = (index == k).nonzero(as_tuple=True)[0]
            out[rows] = self.denoise_level(y[rows].float(), k).to(y.dtype)
        return out

    def denoise_level(self, y: Tensor, k: int) -> Tensor:
        """All rows of ``y`` (B, C, H, W) at grid level ``k``."""
        t = float(self.levels[k])
        a, size = math.sqrt(1.0 - t), self.patch_sizes[k]
        if not self.equivariant:
            return self._same_position(y, size, a, t)
        if self.padding == "circular":
            return self._every_position_circular(y, size, a, t)
        return self._every_position_zeros(y, size, a, t)

    def _same_position(self, y: Tensor, size: int, a: float, t: float) -> Tensor:
        """LS: per pixel, a softmax over the training images of window sums (box filters), a block
        of images at a time (QUERY_ROWS pixels)."""
        rows = max(1, QUERY_ROWS // (self.data_shape[1] * self.data_shape[2]))
        return torch.cat([self._same_position_block(y[s : s + rows], size, a, t) for s in range(0, y.shape[0], rows)])

    def _same_position_block(self, y: Tensor, size: int, a: float, t: float) -> Tensor:
        batch, height, width = y.shape[0], self.data_shape[1], self.data_shape[2]
        chunk = max(1, BLOCK_ELEMENTS // max(1, batch * height * width))
        running_max = torch.full((batch, 1, height, width), -math.inf, device=y.device)
        total = torch.zeros_like(running_max)
        acc = torch.zeros_like(y)
        for start in range(0, self.data.shape[0], chunk):
            images = self.data[start : start + chunk]
            products = torch.einsum("bchw,nchw->bnhw", y, images).reshape(-1, 1, height, width)
            inner = box_sum(products, size, self.padding).reshape(batch, -1, height, width)
            norms = box_sum(images.pow(2).sum(dim=1, keepdim=True), size, self.padding).reshape(1, -1, height, width)
            logits = (a * inner - (0.5 * a * a) * norms) * (LOG2_E / t)
            running_max, rescale, weights = softmax_step(running_max, logits)
            total = total * rescale + weights.sum(dim=1, keepdim=True)
            acc = acc * rescale + torch.einsum("bnhw,nchw->bchw", weights, images)
        return acc / total

    def _every_position_circular(self, y: Tensor, size: int, a: float, t: float) -> Tensor:
        """ELS, circular: every wrapped noisy patch against every fully-inside training patch."""
        channels, height, width = self.data_shape
        half = size // 2
        queries = F.unfold(F.pad(y, (half,) * 4, mode="circular"), size).transpose(1, 2)  # (B, HW, C P^2)
        candidates = F.unfold(self.data, size).transpose(1, 2).reshape(-1, channels * size * size)
        centres = self.data[:, :, half : height - half, half : width - half].permute(0, 2, 3, 1).reshape(-1, channels)
        out = softmax_centres(queries, candidates, centres, a, t)
        return out.transpose(1, 2).reshape(y.shape)

    def _every_position_zeros(self, y: Tensor, size: int, a: float, t: float) -> Tensor:
        """ELS, zero padding: pixels grouped by the padding their patch sees; each group matches
        the training patches at its own positions."""
        channels, height, width = self.data_shape
        half = size // 2
        queries = F.unfold(y, size, padding=half)  # (B, C P^2, HW)
        patches = F.unfold(self.data, size, padding=half)  # (N, C P^2, HW)
        flat_data = self.data.reshape(self.data.shape[0], channels, -1)
        out = torch.empty(y.shape[0], channels, height * width, device=y.device)
        for rows in position_classes(height, half):
            for cols in position_classes(width, half):
                where = (rows.reshape(-1, 1) * width + cols.reshape(1, -1)).reshape(-1).to(y.device)
                candidates = patches[:, :, where].permute(0, 2, 1).reshape(-1, patches.shape[1])
                centres = flat_data[:, :, where].permute(0, 2, 1).reshape(-1, channels)
                group = softmax_centres(queries[:, :, where].transpose(1, 2), candidates, centres, a, t)
                out[:, :, where] = group.transpose(1, 2)
        return out.reshape(y.shape)


def position_classes(extent: int, half: int) -> list[Tensor]:
    """Rows (or columns) grouped by the zero padding a patch of half-width ``half`` sees there:
    one group for the positions whose patch lies inside, one per position near an edge."""
    inside = [i for i in range(extent) if half <= i <= extent - 1 - half]
    edges = [[i] for i in range(extent) if not half <= i <= extent - 1 - half]
    return [torch.tensor(group) for group in ([inside] if inside else []) + edges]


@family("local_score")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "closed_form",
    conditioning: str = "per_level",
    equivariant: bool = True,
    padding: str = "circular",
    patch_sizes: int | list[int] | None = None,
) -> LocalScoreDenoiser:
    """Kamb & Ganguli's LS (``equivariant=false``) or ELS machine, fitted in closed form (it keeps
    the training set); ``patch_sizes``: one odd size, or one per level highest noise first (null:
    :func:`default_patch_sizes` up to :func:`largest_patch`)."""
    check_only_fit(fit, "closed_form", "local_score")
    check_choice("conditioning", conditioning, ("per_level",), "local_score (one patch size per level)")
    check_choice("padding", padding, PADDINGS, "local_score")
    if not isinstance(equivariant, bool):
        raise UserError(f"denoiser.equivariant={equivariant!r} is not valid; use true or false")
    if len(data_shape) != 3:
        raise UserError(f"local_score needs images of shape (C, H, W), got data shape {tuple(data_shape)}")
    shape = (int(data_shape[0]), int(data_shape[1]), int(data_shape[2]))
    sizes = checked_patch_sizes(patch_sizes, shape, len(grid), largest_patch(shape, equivariant, padding))
    if equivariant and padding == "circular" and max(sizes) > min(shape[1:]):
        raise UserError(
            f"denoiser.patch_sizes up to {max(sizes)}: with equivariant=true and padding=circular the candidates are "
            f"the training patches that fit inside the {shape[1]}x{shape[2]} image, so every size must be <= "
            f"{min(shape[1:])} (or use padding=zeros)"
        )
    return LocalScoreDenoiser(shape, grid, sizes, equivariant, padding)
