"""The paper's local polynomial denoiser: one ridge regression per patch position on patch features.

Levine & Weiss (2026): at noise level t, output pixel l (all its channels) is predicted from
the P x P noisy patch z that contains l through the features [1, z, (W z)^p] of
:func:`~lightning_diff.denoisers.features.power_features`, with a ridge readout fitted on the
training patches at the same place. One projection W per level, shared by all places. P and
the number of random features shrink with t (:data:`PAPER_PATCH_SIZES`,
:data:`PAPER_NUM_FEATURES` for 64 x 64 images, highest noise first; :func:`paper_schedule`
scales them). The patch of pixel l is centred on l where it fits and slides inwards at the
border (rows start at clamp(l - P // 2, 0, H - P), columns alike), so a patch never leaves the
image and the largest one, P = H, is a single global regression.

The straightforward implementation fits one regression per output pixel that predicts the
whole patch. Here, with the same estimator:

- one factorisation per distinct patch position ((H - P + 1) x (W - P + 1) of them, one when
  P = H) serves every pixel whose patch sits there, and each pixel's readout is solved for its
  own C outputs only: one batched solve gives every position's centre pixel, and a few more
  the other pixels of the border positions, grouped by where they sit;
- W z for all positions is a valid cross-correlation of the image with the F_r projection
  filters: ``conv2d`` when there are few positions, otherwise a DFT along the columns with the
  sums along the rows as complex matrix products, and the inverse DFT evaluated only at the
  positions (a matrix product);
- with M = N * noise_draws training patches and F = 1 + C P^2 + F_r features, a level is fitted
  in dual form (M x M kernel) or primal form (F x F Gram), whichever costs less;
- in dual form, the linear part of the kernel, z_i . z_j over a window, is either a matrix
  product of patches or inner products of column strips summed over neighbouring columns,
  whichever costs less; the fitted model keeps the noisy training images and each pixel's
  dual coefficients for it.

Memory: the fit of a level holds the projected features of its positions,
(H - P + 1)(W - P + 1) x M x F_r floats; kernels and Grams are built a block of positions at
a time.
"""

import math

import torch
from torch import Tensor

from lightning_diff.denoisers.closed_form import ClosedFormDenoiser
from lightning_diff.denoisers.contract import check_choice, check_only_fit
from lightning_diff.denoisers.features import random_projection
from lightning_diff.denoisers.patch_ops import (
    BLOCK_ELEMENTS,
    patch_projections,
    patches,
    position_groups,
    regularised_factor,
    take,
    window_inner_products,
)
from lightning_diff.denoisers.registry import family
from lightning_diff.diffusion.grids import NoiseGrid, level_index
from lightning_diff.diffusion.process import add_noise
from lightning_diff.errors import UserError
from lightning_diff.seeding import derive_seed, generator

PAPER_IMAGE_SIZE = 64
PAPER_PATCH_SIZES = (64, 55, 45, 35, 27, 21, 15, 11, 7, 3)
PAPER_NUM_FEATURES = (1024, 1024, 512, 256, 128, 128, 64, 32, 16, 8)
_FITTED_STATE = ("bias", "power_readout", "linear_readout", "train_inputs", "dual_coef")

_PROJECTION_STREAM = 1
_NOISE_STREAM = 2
_VALIDATION_STREAM = 3
# ridge: auto tries these relative penalties at every level and keeps the one with the lowest
# error on fresh noise (the fit's own draws are what a too-small penalty overfits).
RIDGE_CANDIDATES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
VALIDATION_IMAGES = 512
# Batched Cholesky of many small systems runs about 4x slower per flop than a batched product.
_FACTOR_SLOWDOWN = 4.0


def _interpolate(schedule: tuple[int, ...], num_levels: int) -> list[float]:
    """``schedule`` read at ``num_levels`` evenly spaced positions, linearly interpolated."""
    if num_levels == 1:
        return [float(schedule[0])]
    out = []
    for k in range(num_levels):
        pos = k * (len(schedule) - 1) / (num_levels - 1)
        lo = min(int(pos), len(schedule) - 2)
        frac = pos - lo
        out.append(schedule[lo] * (1.0 - frac) + schedule[lo + 1] * frac)
    return out


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def paper_schedule(image_size: int, num_levels: int) -> tuple[list[int], list[int]]:
    """Patch sizes and random-feature counts for ``num_levels`` levels, highest noise first.

    The paper's 10-level schedule for 64 x 64 images is interpolated over the level position
    and patch sizes are scaled by ``image_size / 64`` (rounded, at least 1, at most the image).
    """
    sizes = [
        min(image_size, max(1, _round_half_up(p64 * image_size / PAPER_IMAGE_SIZE)))
        for p64 in _interpolate(PAPER_PATCH_SIZES, num_levels)
    ]
    features = [max(1, _round_half_up(f)) for f in _interpolate(PAPER_NUM_FEATURES, num_levels)]
    return sizes, features


class PolynomialPatchDenoiser(ClosedFormDenoiser):
    """Local polynomial ridge denoiser, one patch size and projection per grid level.

    Args:
        data_shape: (C, H, W).
        grid: the noise grid; level k (ascending t) uses ``patch_sizes[k]`` and
            ``num_features[k]`` random features; both lists are in grid order here.
        power: the power p of the random features.
        noise_draws: noisy copies of each training image per level (fixed seed).
        ridge: relative ridge penalty (see :func:`regularised_factor`), positive, or ``"auto"``:
            per level, the one of :data:`RIDGE_CANDIDATES` whose fit has the lowest squared error
            on fresh noise draws of (up to ``VALIDATION_IMAGES``) training images, i.e. on the
            diffusion objective over the training set that the fit estimates from its own draws.
        seed: seeds the projections and the training noise.

    Fitted state, in buffers: ``ridges`` (K,), the penalty each level used; per level k, for
    the L = H * W pixels in row-major order, ``bias_k`` (L, C), ``power_readout_k``
    (L, F_r, C) and either ``linear_readout_k`` (L, C P^2, C) (primal fit) or
    ``train_inputs_k`` (M, C, H, W) with ``dual_coef_k`` (L, M, C) (dual fit).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        grid: NoiseGrid,
        patch_sizes: list[int],
        num_features: list[int],
        power: int = 2,
        noise_draws: int = 1,
        ridge: float | str = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_arguments(data_shape, grid, patch_sizes, num_features, power, noise_draws, ridge)
        self.data_shape = tuple(int(s) for s in data_shape)
        self.patch_sizes = [int(p) for p in patch_sizes]
        self.num_features = [int(f) for f in num_features]
        self.power = power
        self.noise_draws = noise_draws
        self.ridge = ridge
        self.seed = seed
        self.register_buffer("levels", grid.levels.clone().float())
        self.register_buffer("ridges", torch.zeros(len(self.patch_sizes)))
        channels = self.data_shape[0]
        for k, (size, count) in enumerate(zip(self.patch_sizes, self.num_features)):
            projection = random_projection(count, channels * size * size, derive_seed(seed, _PROJECTION_STREAM, k))
            self.register_buffer(f"projection_{k}", projection)
            for name in _FITTED_STATE:
                self.register_buffer(f"{name}_{k}", torch.zeros(0))

    def _state(self, name: str, level: int) -> Tensor:
        return getattr(self, f"{name}_{level}")

    def is_dual(self, level: int) -> bool:
        """Whether level ``level`` was fitted in dual form (M x M kernels)."""
        return self._state("dual_coef", level).numel() > 0

    def _filters(self, level: int, dtype: torch.dtype) -> Tensor:
        size = self.patch_sizes[level]
        return self._state("projection", level).to(dtype).reshape(-1, self.data_shape[0], size, size)

    def _position_blocks(self, level: int, per_position: int) -> list[range]:
        """Blocks of position rows whose largest intermediate has about BLOCK_ELEMENTS entries."""
        _, height, width = self.data_shape
        out_h, out_w = height - self.patch_sizes[level] + 1, width - self.patch_sizes[level] + 1
        step = max(1, min(out_h, BLOCK_ELEMENTS // max(1, per_position * out_w)))
        return [range(r, min(out_h, r + step)) for r in range(0, out_h, step)]

    def _linear_kernel_flops(self, level: int) -> tuple[float, float]:
        """Flops per pair of images and position of the linear kernel by column strips and by patches."""
        channels, _, width = self.data_shape
        size = self.patch_sizes[level]
        out_w = width - size + 1
        strips = 2 * width * (channels * size + out_w) / out_w
        return strips, 2 * channels * size * size

    def _strips_pay(self, level: int) -> bool:
        strips, by_patches = self._linear_kernel_flops(level)
        return strips < by_patches

    def _dual_is_cheaper(self, level: int, samples: int) -> bool:
        """Compare one position's M x M kernel route with its F x F Gram route."""
        size, count = self.patch_sizes[level], self.num_features[level]
        total = 1 + self.data_shape[0] * size * size + count
        dual = samples**2 * (2 * count + min(self._linear_kernel_flops(level))) + _FACTOR_SLOWDOWN * samples**3 / 3
        primal = 2 * samples * total**2 + _FACTOR_SLOWDOWN * total**3 / 3
        return dual < primal

    def training_inputs(self, x0: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Noisy inputs and clean images the fit of ``level`` regresses on, each (M, C, H, W).

        Row d * N + i is draw d of training image i, drawn from a generator seeded by
        (seed, level), so a refit gives the same regression.
        """
        clean = x0.repeat(self.noise_draws, *([1] * (x0.dim() - 1)))
        gen = generator(self.seed, _NOISE_STREAM, level, device=x0.device)
        eps = torch.randn(clean.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        t = torch.full((clean.shape[0],), float(self.levels[level]), device=x0.device)
        return add_noise(clean, t, eps), clean

    def validation_inputs(self, x0: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Fresh noisy copies of (an evenly spaced subset of) the training images and the images."""
        clean = x0[torch.linspace(0, x0.shape[0] - 1, min(x0.shape[0], VALIDATION_IMAGES)).long()]
        gen = generator(self.seed, _VALIDATION_STREAM, level, device=x0.device)
        eps = torch.randn(clean.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        t = torch.full((clean.shape[0],), float(self.levels[level]), device=x0.device)
        return add_noise(clean, t, eps), clean

    def _fit(self, x0: Tensor) -> None:
        if tuple(x0.shape[1:]) != self.data_shape:
            raise UserError(
                f"polynomial_patch was built for data of shape {self.data_shape} but is fitted on "
                f"{tuple(x0.shape[1:])}; set the denoiser's data_shape to the dataset's shape"
            )
        x0 = x0.to(self.levels.device)
        if not x0.is_floating_point():
            x0 = x0.float()
        for k in range(len(self.patch_sizes)):
            if self.ridge == "auto":
                self._fit_level_choosing_ridge(k, x0)
            else:
                self._fit_level(k, x0, float(self.ridge))

    def _fit_level_choosing_ridge(self, level: int, x0: Tensor) -> None:
        noisy, clean = self.validation_inputs(x0, level)
        best_error, best_ridge, best_state = math.inf, None, {}
        for ridge in RIDGE_CANDIDATES:
            self._fit_level(level, x0, ridge)
            error = float((self._predict(level, noisy) - clean).pow(2).mean())
            if error < best_error:
                best_error, best_ridge = error, ridge
                best_state = {name: self._state(name, level) for name in _FITTED_STATE}
        if best_ridge is None:
            raise UserError(
                f"polynomial_patch level {level}: every ridge candidate gave a non-finite error on fresh "
                "noise; check the training images for NaN or inf"
            )
        for name, value in best_state.items():
            setattr(self, f"{name}_{level}", value)
        self.ridges[level] = best_ridge

    def _linear_kernel(self, level: int, a: Tensor, b: Tensor, rows: range) -> Tensor:
        """z_i . z_j for the patches of a_i and b_j at position rows ``rows``: (Q_block, n_a, n_b)."""
        size = self.patch_sizes[level]
        if self._strips_pay(level):
            return window_inner_products(a, b, size, rows)
        return patches(a, size, rows) @ patches(b, size, rows).transpose(1, 2)

    def _fit_level(self, level: int, x0: Tensor, ridge: float) -> None:
        channels, height, width = self.data_shape
        size, count = self.patch_sizes[level], self.num_features[level]
        noisy, clean = self.training_inputs(x0, level)
        samples = noisy.shape[0]
        powered = patch_projections(noisy, self._filters(level, x0.dtype)).pow_(self.power)  # (Q, M, F_r)
        targets = clean.permute(2, 3, 0, 1).reshape(height * width, samples, channels)
        dim = channels * size * size
        total = 1 + dim + count
        pixels_total = height * width
        bias = x0.new_empty(pixels_total, channels)
        power_readout = x0.new_empty(pixels_total, count, channels)
        dual = self._dual_is_cheaper(level, samples)
        if dual:
            coef = x0.new_empty(pixels_total, samples, channels)
            per_position = samples * samples + (0 if self._strips_pay(level) else samples * dim)
        else:
            linear = x0.new_empty(pixels_total, dim, channels)
            per_position = samples * total + total * total
        out_w = width - size + 1
        for rows in self._position_blocks(level, per_position):
            feats = powered[rows.start * out_w : rows.stop * out_w]
            if dual:
                system = torch.baddbmm(self._linear_kernel(level, noisy, noisy, rows), feats, feats.transpose(1, 2))
                system.add_(1.0)
            else:
                phi = torch.cat([feats.new_ones(feats.shape[0], samples, 1), patches(noisy, size, rows), feats], dim=2)
                system = phi.transpose(1, 2) @ phi
            factor = regularised_factor(system, ridge, total)
            for positions, pixels in position_groups(height, width, size, rows):
                groups, served = pixels.shape
                # Each position's right-hand sides are the C targets of each pixel it serves.
                rhs = targets[pixels].permute(0, 2, 1, 3).reshape(groups, samples, served * channels)
                if not dual:
                    rhs = take(phi, positions).transpose(1, 2) @ rhs
                solution = torch.cholesky_solve(rhs.to(factor.dtype), take(factor, positions)).to(x0.dtype)
                flat = pixels.reshape(-1)
                if dual:
                    power = take(feats, positions).transpose(1, 2) @ solution
                    bias[flat] = solution.sum(dim=1).reshape(-1, channels)
                    coef[flat] = _per_pixel(solution, served, channels)
                    power_readout[flat] = _per_pixel(power, served, channels)
                else:
                    beta = _per_pixel(solution, served, channels)
                    bias[flat] = beta[:, 0]
                    linear[flat] = beta[:, 1 : 1 + dim]
                    power_readout[flat] = beta[:, 1 + dim :]
        empty = x0.new_zeros(0)
        setattr(self, f"bias_{level}", bias)
        setattr(self, f"power_readout_{level}", power_readout)
        setattr(self, f"linear_readout_{level}", empty if dual else linear)
        setattr(self, f"train_inputs_{level}", noisy if dual else empty)
        setattr(self, f"dual_coef_{level}", coef if dual else empty)
        self.ridges[level] = ridge

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        if not bool(self.fitted):
            raise UserError("the polynomial_patch denoiser is not fitted: fit it (denoiser.fit=closed_form) first")
        idx = level_index(self.levels, t)
        first = int(idx[0])
        if bool((idx == first).all()):
            return self._predict(first, y)
        out = torch.empty_like(y)
        for k in torch.unique(idx).tolist():
            rows = (idx == k).nonzero(as_tuple=True)[0]
            out[rows] = self._predict(k, y[rows])
        return out

    def _predict(self, level: int, y: Tensor) -> Tensor:
        channels, height, width = self.data_shape
        size = self.patch_sizes[level]
        bias = self._state("bias", level)
        batch = y.shape[0]
        y = y.to(bias.dtype)
        powered = patch_projections(y, self._filters(level, bias.dtype)).pow_(self.power)  # (Q, B, F_r)
        dual = self.is_dual(level)
        if dual:
            train = self._state("train_inputs", level)
            readout = self._state("dual_coef", level)
        else:
            readout = self._state("linear_readout", level)
        power_readout = self._state("power_readout", level)
        out = y.new_empty(height * width, batch, channels)
        out_w = width - size + 1
        for rows in self._position_blocks(level, batch * readout.shape[1]):
            feats = powered[rows.start * out_w : rows.stop * out_w]
            inputs = self._linear_kernel(level, y, train, rows) if dual else patches(y, size, rows)
            for positions, pixels in position_groups(height, width, size, rows):
                groups, served = pixels.shape
                flat = pixels.reshape(-1)
                pred = take(feats, positions) @ _per_position(power_readout[flat], groups, served)
                pred += take(inputs, positions) @ _per_position(readout[flat], groups, served)
                pred += bias[flat].reshape(groups, 1, served * channels)
                out[flat] = pred.reshape(groups, batch, served, channels).transpose(1, 2).reshape(-1, batch, channels)
        return out.reshape(height, width, batch, channels).permute(2, 3, 0, 1).to(y.dtype)


def _per_pixel(solution: Tensor, served: int, channels: int) -> Tensor:
    """(G, K, r C) readouts of G positions for their r pixels -> (G r, K, C), one per pixel."""
    groups, size = solution.shape[:2]
    return solution.reshape(groups, size, served, channels).transpose(1, 2).reshape(groups * served, size, channels)


def _per_position(readout: Tensor, groups: int, served: int) -> Tensor:
    """(G r, K, C) per-pixel readouts -> (G, K, r C), the inverse of :func:`_per_pixel`."""
    size, channels = readout.shape[1:]
    return readout.reshape(groups, served, size, channels).transpose(1, 2).reshape(groups, size, served * channels)


def _check_arguments(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    patch_sizes: list[int],
    num_features: list[int],
    power: int,
    noise_draws: int,
    ridge: float | str,
) -> None:
    if len(data_shape) != 3 or min(data_shape) < 1:
        raise UserError(
            f"polynomial_patch needs images of shape (C, H, W), got data shape {tuple(data_shape)}; "
            "use the polynomial family for vector data"
        )
    levels = len(grid)
    for key, values in (("patch_sizes", patch_sizes), ("num_features", num_features)):
        if len(values) != levels:
            raise UserError(
                f"denoiser.{key} has {len(values)} entries but the noise grid has {levels} levels; "
                f"give one per level (highest noise first) or leave it null for the paper's schedule"
            )
    largest = min(data_shape[1:])
    bad_sizes = [p for p in patch_sizes if int(p) != p or not 1 <= p <= largest]
    if bad_sizes:
        raise UserError(
            f"denoiser.patch_sizes has {bad_sizes}: every patch size must be an integer from 1 to {largest}, "
            f"the smaller side of images of shape {tuple(data_shape)}"
        )
    bad_counts = [f for f in num_features if int(f) != f or f < 1]
    if bad_counts:
        raise UserError(f"denoiser.num_features has {bad_counts}: every feature count must be an integer >= 1")
    if int(power) != power or power < 1:
        raise UserError(f"denoiser.power={power} must be an integer >= 1")
    if int(noise_draws) != noise_draws or noise_draws < 1:
        raise UserError(f"denoiser.noise_draws={noise_draws} must be an integer >= 1")
    if ridge == "auto":
        return
    if isinstance(ridge, str) or not ridge > 0:
        raise UserError(
            f"denoiser.ridge={ridge!r} must be > 0 or auto: a position may have fewer training patches "
            "than features, so its unpenalised regression is singular"
        )


@family("polynomial_patch")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "closed_form",
    conditioning: str = "per_level",
    power: int = 2,
    patch_sizes: list[int] | None = None,
    num_features: list[int] | None = None,
    noise_draws: int = 1,
    ridge: float | str = 1e-3,
    seed: int = 0,
) -> PolynomialPatchDenoiser:
    """The paper's local polynomial denoiser, fitted in closed form, one regression per level.

    ``patch_sizes`` and ``num_features`` list one entry per level from the highest noise level
    down, as in the paper; left out, they follow :func:`paper_schedule` for the image size.
    """
    check_choice("conditioning", conditioning, ("per_level",), "polynomial_patch (one regression per level)")
    check_only_fit(fit, "closed_form", "polynomial_patch")
    if len(data_shape) != 3:
        raise UserError(f"polynomial_patch needs images of shape (C, H, W), got data shape {tuple(data_shape)}")
    default_sizes, default_counts = paper_schedule(min(data_shape[1:]), len(grid))
    sizes = list(default_sizes if patch_sizes is None else patch_sizes)
    counts = list(default_counts if num_features is None else num_features)
    return PolynomialPatchDenoiser(
        data_shape,
        grid,
        patch_sizes=sizes[::-1],
        num_features=counts[::-1],
        power=power,
        noise_draws=noise_draws,
        ridge=ridge,
        seed=seed,
    )
