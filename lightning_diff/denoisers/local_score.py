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
exact (a running log-sum-exp over all candidates), or, for ELS with ``tolerance`` > 0, exact up
to a certified bound (:mod:`lightning_diff.denoisers.local_score_bound`). With
``equivariant=false``, ``padding=zeros`` and P >= 2 side - 1 every patch covers the whole image,
so LS is the empirical (Bayes-optimal) denoiser.

Cost and memory per level (B samples, N training images, H x W x C, D = C P^2):

- LS: the window sums of the per-pixel products by prefix sums (:mod:`window_sums`), so about a
  dozen passes over B N H W values whatever P (the box filter this replaces cost P^2 per value:
  3,025 at 28x28 with P = 55). Memory: the cached pixel features, H W (C + 2) N 4 bytes (564 MB
  at full Fashion-MNIST), plus a few blocks of ``BLOCK_ELEMENTS`` values in float64.
- ELS: B H W queries against every candidate, D multiply-adds and one exponential per pair;
  the candidates stream past in chunks (:mod:`patch_candidates`), never all held (full
  Fashion-MNIST, circular, P = 5: 34.6M candidates x 25 values would be 3.5 GB in float32; P =
  15: 10.6 GB). Memory: the training set (N C H W 4 bytes, 188 MB at full Fashion-MNIST), for
  zero padding one copy padded by P // 2 for the patch size in use (N C (H + P - 1) (W + P - 1)
  4 bytes: 245 MB at P = 5, 725 MB at P = 27), the queries (B H W D 4 bytes, twice), per block
  of ``QUERY_ROWS`` queries a state of C + 2 values each, and chunks of 16 MB (40 MB with their
  centred float64 copy).
- ELS with more queries than one block (``QUERY_ROWS``): the set's leading direction, D^2
  values, estimated once per patch size and position class from a sample of its candidates.
- ELS with a tolerance adds the trees (:mod:`patch_tree`), one per position class and patch
  size: 8 bytes per distinct candidate plus the nodes (at most about 180 MB at D = 25), kept
  for later calls up to ``TREE_CACHE_BYTES`` in all; building one takes another 24 bytes per
  candidate and a sample of at most 256 MB for a moment (1.1 GB at P = 5). At full
  Fashion-MNIST that is at most about 0.2 + 0.7 + 3 + 1.1 GB (data, padded copy, trees,
  building) and, for zero padding at large P, LS's 0.6 GB of features: within 6 GB.
- ELS with zero padding: a pixel whose class is a single position has the same candidates as
  LS there, so where such pixels are many (large P) they are computed as LS.
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diff.denoisers.closed_form import ClosedFormDenoiser
from lightning_diff.denoisers.contract import check_choice, check_only_fit
from lightning_diff.denoisers.local_score_bound import bounded_posterior
from lightning_diff.denoisers.patch_candidates import PatchSet, SetStatistics
from lightning_diff.denoisers.patch_posterior import (
    BLOCK_ELEMENTS,
    FLOAT32_EPS,
    LOGIT_ROUNDING,
    QUERY_ROWS,
    exact_posterior,
    shifted_weights,
)
from lightning_diff.denoisers.patch_tree import PatchTree, build_tree, tree_depth
from lightning_diff.denoisers.registry import family
from lightning_diff.denoisers.training_set import LOG2_E
from lightning_diff.denoisers.window_sums import window_sums
from lightning_diff.diffusion.grids import NoiseGrid, level_index
from lightning_diff.errors import UserError

PADDINGS = ("circular", "zeros")
# An LS pass costs about as much per pixel and candidate as this many multiply-adds of the ELS
# product: a dozen passes over memory (products, two prefix sums and two differences, the
# maximum, the exponentials, the weighted sum) at roughly ten multiply-adds each. Zero-padded
# ELS computes its single-position pixels as LS when their products would cost more.
SAME_POSITION_MULTIPLY_ADDS = 128
# Trees kept for reuse across calls (least recently used dropped first): a sampling run visits
# each patch size once per batch, and rebuilding costs a few passes over the candidates.
TREE_CACHE_BYTES = 3 << 30


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


def checked_tolerance(tolerance: object) -> float:
    """The posterior weight ELS may skip per pixel (0: exact), or one :class:`UserError`."""
    if tolerance is None:
        return 0.0
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise UserError(
            f"denoiser.tolerance={tolerance!r} is not valid; give the posterior weight the machine may skip per "
            "pixel, a number in [0, 1) such as 1e-7 (the error it allows is at most that times the range of the "
            "pixel values), or null (or 0) for the exact posterior"
        )
    return float(tolerance)


def position_ranges(extent: int, half: int) -> list[range]:
    """Rows (or columns) grouped by the zero padding a patch of half-width ``half`` sees there:
    one range for the positions whose patch lies inside, one per position near an edge."""
    inside = range(half, extent - half)
    edges = [range(i, i + 1) for i in range(extent) if i not in inside]
    return ([inside] if len(inside) else []) + edges


class LocalScoreDenoiser(ClosedFormDenoiser):
    """LS / ELS machine with one patch size per grid level (see the module docstring).

    After every call, ``last_error_bounds`` maps each level it denoised (t rounded to 6 decimals,
    as grid levels match to 1e-5) to the largest bound on
    the output's error from skipped candidates (0 when exact; float rounding, held within 1e-5
    of float64 as in the exact machine, comes on top), ``last_error_bound`` is their maximum,
    and ``last_products`` maps each level to the share of all query x candidate products it
    evaluated (below 1 for the exact machine too where ordered blocks of queries passed over
    candidates whose weights are below float32's range: :mod:`patch_posterior`).

    Args:
        data_shape: (C, H, W).
        grid: the noise grid; ``patch_sizes`` lists one odd size per level, highest noise first.
        tolerance: ELS only: the posterior weight a pixel may skip (0: exact).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        grid: NoiseGrid,
        patch_sizes: list[int],
        equivariant: bool,
        padding: str,
        tolerance: float = 0.0,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.equivariant = equivariant
        self.padding = padding
        self.tolerance = tolerance
        self.patch_sizes = list(reversed(patch_sizes))  # grid order: ascending t
        self.register_buffer("levels", grid.levels.clone().float())
        self.register_buffer("data", torch.zeros(0, *self.data_shape))
        self.last_error_bound = 0.0
        self.last_error_bounds: dict[float, float] = {}
        self.last_products: dict[float, float] = {}
        self._cache_key: tuple | None = None
        self._cache: dict = {}

    def _fit(self, x0: Tensor) -> None:
        self.data = x0.reshape(x0.shape[0], *self.data_shape).float().to(self.data.device).contiguous()
        self._cache_key = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        self._cache_key = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def cached(self) -> dict:
        """What the sampling calls reuse, derived from the training set only: dropped when the data
        changes (fit, checkpoint load, another device)."""
        key = (self.data.data_ptr(), str(self.data.device), tuple(self.data.shape))
        if key != self._cache_key:
            self._cache_key, self._cache = key, {}
        return self._cache

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        if self.data.shape[0] == 0:
            raise UserError("the local score machine has no training data: fit it (denoiser.fit=closed_form) first")
        index = level_index(self.levels, t)
        out = torch.empty_like(y)
        self.last_error_bounds, self.last_products = {}, {}
        for k in torch.unique(index).tolist():
            rows = (index == k).nonzero(as_tuple=True)[0]
            out[rows] = self.denoise_level(y[rows].float(), k).to(y.dtype)
        self.last_error_bound = max(self.last_error_bounds.values(), default=0.0)
        return out

    def denoise_level(self, y: Tensor, k: int) -> Tensor:
        """All rows of ``y`` (B, C, H, W) at grid level ``k``."""
        t = float(self.levels[k])
        a, size = math.sqrt(1.0 - t), self.patch_sizes[k]
        self.last_error_bounds[round(t, 6)], self.last_products[round(t, 6)] = 0.0, 1.0
        if not self.equivariant:
            return self._same_position(y, size, a, t)
        return self._every_position(y, size, a, t)

    def _pixel_features(self) -> tuple[Tensor, Tensor, float]:
        """LS's training-set side, built once: the mean image (H W, C), per pixel and image the
        features [|x'|^2, x', 1] of x' = x - mean as (H W, C + 2, N), and the largest |x'|."""
        cache = self.cached()
        if "pixel_features" not in cache:
            n, channels = self.data.shape[0], self.data_shape[0]
            pixels = self.data.reshape(n, channels, -1).permute(2, 1, 0)  # (HW, C, N)
            mean = pixels.mean(dim=2)
            centred = pixels - mean[:, :, None]
            squares = centred.pow(2).sum(dim=1, keepdim=True)
            features = torch.cat([squares, centred, torch.ones_like(squares)], dim=1).contiguous()
            largest = float(squares.sum(dim=0).max().sqrt())
            cache["pixel_features"] = (mean, features, largest)
        return cache["pixel_features"]

    def _same_position(self, y: Tensor, size: int, a: float, t: float) -> Tensor:
        """LS: per pixel, a softmax over the training images of window sums of per-pixel terms.

        The logit of image n at pixel x is the window sum around x of a y'.x'_n - a^2 |x'_n|^2 / 2
        (primes: centred on the mean image), so one batched product over the pixels gives the
        terms and two prefix-sum passes the windows. Rounding: each term's is at most eps times its
        size, and the prefix sums add at most eps (P + 3) times the sum of the terms' sizes over the
        image per axis, doubled where circular windows wrap; with rho = (a |y'| |x'| + a^2 |x'|^2 / 2) / t
        (whole-image norms, the largest over samples and images) the terms are formed in float64
        when (C + 1) eps rho exceeds ``LOGIT_ROUNDING`` and the window sums when (C + 1 + 4 (P + 3))
        eps rho does (at 28x28 and large P, all but the highest levels).
        """
        channels, height, width = self.data_shape
        pixels, batch = height * width, y.shape[0]
        mean, features, largest = self._pixel_features()
        centred = y.permute(2, 3, 0, 1).reshape(pixels, batch, channels) - a * mean[:, None, :]
        largest_query = float(centred.pow(2).sum(dim=(0, 2)).max().sqrt()) if batch else 0.0
        rho = (a * largest_query * largest + 0.5 * a * a * largest**2) / t
        product_rounding = (channels + 1) * FLOAT32_EPS * rho
        window_rounding = 4 * (size + 3) * FLOAT32_EPS * rho
        products = torch.float64 if product_rounding > LOGIT_ROUNDING else torch.float32
        windows = torch.float64 if product_rounding + window_rounding > LOGIT_ROUNDING else torch.float32
        scale = LOG2_E / t
        queries = torch.cat([centred.new_full((pixels, batch, 1), -0.5 * a * a * scale), centred * (a * scale)], dim=2)
        rows = max(1, QUERY_ROWS // pixels)
        images = max(1, BLOCK_ELEMENTS // (pixels * rows))
        out = torch.cat([
            self._same_position_block(queries[:, start : start + rows].to(products), features, size, windows, images)
            for start in range(0, batch, rows)
        ], dim=1)
        return (out + mean[:, None, :]).reshape(height, width, batch, channels).permute(2, 3, 0, 1)

    def _same_position_block(self, queries: Tensor, features: Tensor, size: int, windows: torch.dtype, images: int
                             ) -> Tensor:
        """Posterior means (H W, b, C) of centred pixels for the query terms (H W, b, C + 1), a chunk
        of ``images`` training images at a time with a running maximum."""
        channels, height, width = self.data_shape
        pixels, batch = queries.shape[:2]
        maximum = torch.full((pixels, batch, 1), -math.inf, dtype=windows, device=queries.device)
        acc = torch.zeros(pixels, batch, channels + 1, dtype=torch.float64, device=queries.device)
        for start in range(0, features.shape[2], images):
            part = features[:, :, start : start + images]
            terms = torch.bmm(queries, part[:, : channels + 1].to(queries.dtype))  # (HW, b, n)
            grid = terms.view(height, width, -1)
            logits = window_sums(window_sums(grid, 1, size, self.padding, windows), 0, size, self.padding, windows)
            logits = logits.view(pixels, batch, -1)
            new_max = torch.maximum(maximum, logits.amax(dim=2, keepdim=True))
            weights = shifted_weights(logits, new_max, torch.float32)
            acc = acc * torch.exp2(maximum - new_max).to(acc.dtype) + torch.bmm(weights, part[:, 1:].transpose(1, 2))
            maximum = new_max
        return (acc[..., :-1] / acc[..., -1:]).float()

    def _every_position(self, y: Tensor, size: int, a: float, t: float) -> Tensor:
        """ELS: the pixels grouped by the candidates they share (circular: every pixel, the
        fully-inside patches; zeros: the pixels with the same padding, the patches centred there)."""
        channels, height, width = self.data_shape
        half = size // 2
        everywhere = torch.arange(height * width, device=y.device)
        if self.padding == "circular":
            queries = F.unfold(F.pad(y, (half,) * 4, mode="circular"), size)  # (B, D, HW)
            inside = PatchSet(self.data, size, range(half, height - half), range(half, width - half), -half)
            groups = [(everywhere, inside)]
        else:
            queries = F.unfold(y, size, padding=half)
            padded = self._padded_data(size)
            groups = [(everywhere.reshape(height, width)[rows.start : rows.stop, cols.start : cols.stop].reshape(-1),
                       PatchSet(padded, size, rows, cols, 0))
                      for rows in position_ranges(height, half) for cols in position_ranges(width, half)]
        out = torch.empty(y.shape[0], channels, height * width, device=y.device)
        single = [where for where, _ in groups if where.numel() == 1]
        if len(single) * channels * size * size >= SAME_POSITION_MULTIPLY_ADDS * height * width:
            where = torch.cat(single)
            out[:, :, where] = self._same_position(y, size, a, t).reshape(out.shape)[:, :, where]
            groups = [(where, patches) for where, patches in groups if where.numel() > 1]
        products, exact_products = 0, 0
        for where, patches in groups:
            group = queries[:, :, where].transpose(1, 2).reshape(-1, queries.shape[1])
            means, bound, evaluated = self._class_posterior(group, patches, a, t)
            out[:, :, where] = means.reshape(y.shape[0], len(where), channels).transpose(1, 2)
            self.last_error_bounds[round(t, 6)] = max(self.last_error_bounds[round(t, 6)], bound)
            products += evaluated
            exact_products += group.shape[0] * patches.count
        if exact_products:
            self.last_products[round(t, 6)] = products / exact_products
        return out.reshape(y.shape)

    def _class_posterior(self, queries: Tensor, patches: PatchSet, a: float, t: float) -> tuple[Tensor, float, int]:
        """Posterior means of one class's queries, the largest error bound, the products evaluated."""
        key = (patches.size, patches.rows, patches.cols)
        statistics = self.cached().setdefault("statistics", {})
        if key not in statistics:
            statistics[key] = patches.statistics()
        stats: SetStatistics = statistics[key]
        if self.tolerance == 0 or tree_depth(patches.count) == 0 or queries.shape[0] == 0:
            direction = None
            if queries.shape[0] > QUERY_ROWS:  # several blocks of queries to order (exact_posterior)
                directions = self.cached().setdefault("directions", {})
                if key not in directions:
                    directions[key] = patches.leading_direction(stats.mean)
                direction = directions[key]
            means, products = exact_posterior(queries, patches, stats, a, t, direction)
            return means, 0.0, products
        trees: OrderedDict[tuple, PatchTree] = self.cached().setdefault("trees", OrderedDict())
        if key not in trees:
            trees[key] = build_tree(patches, stats, torch.Generator().manual_seed(0))
            while len(trees) > 1 and sum(tree.nbytes() for tree in trees.values()) > TREE_CACHE_BYTES:
                trees.popitem(last=False)
        trees.move_to_end(key)
        tree = trees[key]
        result = bounded_posterior(queries, patches, tree, a, t, self.tolerance)
        return result.means, float(result.bounds.max()), result.products

    def _padded_data(self, size: int) -> Tensor:
        """The training images with P // 2 zeros around them, for the patch size in use only."""
        cache = self.cached()
        if cache.get("padded", (None,))[0] != size:
            cache.pop("padded", None)
            cache["padded"] = (size, F.pad(self.data, (size // 2,) * 4).contiguous())
        return cache["padded"][1]


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
    tolerance: float | None = None,
) -> LocalScoreDenoiser:
    """Kamb & Ganguli's LS (``equivariant=false``) or ELS machine, fitted in closed form (it keeps
    the training set); ``patch_sizes``: one odd size, or one per level highest noise first (null:
    :func:`default_patch_sizes` up to :func:`largest_patch`); ``tolerance``: the posterior weight
    ELS may skip per pixel, with the bound it certifies (null or 0: exact; LS is always exact)."""
    check_only_fit(fit, "closed_form", "local_score")
    check_choice("conditioning", conditioning, ("per_level",), "local_score (one patch size per level)")
    check_choice("padding", padding, PADDINGS, "local_score")
    if not isinstance(equivariant, bool):
        raise UserError(f"denoiser.equivariant={equivariant!r} is not valid; use true or false")
    skip = checked_tolerance(tolerance)
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
    return LocalScoreDenoiser(shape, grid, sizes, equivariant, padding, skip)
