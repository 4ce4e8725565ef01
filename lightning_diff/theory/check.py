"""Comparisons of a run with its family's prediction, called by the training entry point.

Each check is built from config (``theory:`` with a ``_target_`` here) and called once after
sampling with keyword arguments only:
``check(denoiser=..., train_data=..., grid=..., sampler=..., samples=..., run_dir=...)``.
It returns plain numbers (predicted next to measured, keys saying which) that go into
``run.json`` under ``theory`` and to W&B, plus ``figure``: the path of a PNG it wrote into
the run directory (or no such key when figures are off).
"""

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_diff.denoisers.contract import Denoiser
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.samplers import Sampler
from lightning_diff.errors import UserError
from lightning_diff.figures import plots
from lightning_diff.metrics.nearest import COPY_RATIO, nearest_two
from lightning_diff.seeding import generator, sample_seeds
from lightning_diff.theory.empirical import copy_failure_bound, expected_distinct
from lightning_diff.theory.linear import GaussianPrediction
from lightning_diff.theory.moments import attach_polygon, moment_gap, moment_matched_pair, split_polygons
from lightning_diff.theory.support import DecoderImage, codes_of, distance_to_set, last_network, padded_box


class TheoryCheck:
    """Base class: compare the samples of a fitted or trained denoiser with a prediction."""

    family = ""

    def __init__(self, figure: bool = True) -> None:
        self.figure = figure

    def __call__(
        self,
        *,
        denoiser: nn.Module,
        train_data: Tensor,
        grid: NoiseGrid,
        sampler: Sampler,
        samples: Tensor,
        run_dir: Path,
    ) -> dict[str, Any]:
        raise NotImplementedError

    def figure_path(self, run_dir: Path) -> Path:
        return Path(run_dir) / f"theory_{self.family}.png"


class LinearGaussianCheck(TheoryCheck):
    """Linear family: per-eigendirection variances against the exact finite-grid Gaussian.

    ``rank`` is the denoiser's rank (null: full); ``tolerance`` is the relative variance error
    reported as acceptable in ``variance_within_tolerance``.
    """

    family = "linear"

    def __init__(self, rank: int | None = None, tolerance: float = 0.02, figure: bool = True) -> None:
        super().__init__(figure)
        self.rank = rank
        self.tolerance = tolerance

    def __call__(
        self,
        *,
        denoiser: nn.Module,
        train_data: Tensor,
        grid: NoiseGrid,
        sampler: Sampler,
        samples: Tensor,
        run_dir: Path,
    ) -> dict[str, Any]:
        prediction = GaussianPrediction.from_data(train_data, grid, sampler, self.rank)
        measured = prediction.measured_variances(samples)
        kept = prediction.rank
        relative = measured[:kept] / prediction.variances[:kept] - 1
        shrinkage = prediction.variances[:kept] / prediction.eigvals[:kept].clamp_min(1e-300)
        flat = samples.reshape(samples.shape[0], -1).to(torch.float64)
        result: dict[str, Any] = {
            "family": self.family,
            "sampler": repr(sampler),
            "num_samples": int(samples.shape[0]),
            "rank": kept,
            "variance_training_eigenvalue": prediction.eigvals.tolist(),
            "variance_predicted": prediction.variances.tolist(),
            "variance_measured": measured.tolist(),
            "variance_relative_error": relative.tolist(),
            "variance_max_relative_error": float(relative.abs().max()),
            "variance_sampling_standard_error": math.sqrt(2.0 / max(1, samples.shape[0] - 1)),
            "variance_tolerance": self.tolerance,
            "variance_within_tolerance": bool(relative.abs().max() <= self.tolerance),
            "predicted_over_training_variance_min": float(shrinkage.min()),
            "predicted_over_training_variance_max": float(shrinkage.max()),
            "mean_error_norm": float((flat.mean(dim=0) - prediction.mean).norm()),
            "mean_standard_error_norm": math.sqrt(float(prediction.variances.sum()) / samples.shape[0]),
        }
        if kept < prediction.eigvals.numel():
            result["energy_outside_subspace_predicted"] = 0.0
            result["energy_outside_subspace_measured"] = prediction.energy_outside_support(samples)
        if self.figure:
            path = plots.variance_figure(
                self.figure_path(run_dir), prediction.eigvals, prediction.variances, measured, repr(sampler), kept
            )
            result["figure"] = str(path)
        return result


class DecoderImageCheck(TheoryCheck):
    """Bottleneck family: samples on the image of the last level's decoder, training data off it.

    The decoder's code box is the range of codes the last network's encoder gives the samples
    and the training data (scaled to the last level), widened by ``box_padding`` of its span.
    """

    family = "bottleneck"

    def __init__(
        self, tolerance: float = 1e-5, grid_points: int = 20_001, box_padding: float = 0.5, figure: bool = True
    ) -> None:
        super().__init__(figure)
        self.tolerance = tolerance
        self.grid_points = grid_points
        self.box_padding = box_padding

    def __call__(
        self,
        *,
        denoiser: nn.Module,
        train_data: Tensor,
        grid: NoiseGrid,
        sampler: Sampler,
        samples: Tensor,
        run_dir: Path,
    ) -> dict[str, Any]:
        t_last = float(grid.levels[0])
        net = last_network(denoiser, t_last)
        scale = math.sqrt(1.0 - t_last)
        device = next(net.parameters()).device
        with torch.no_grad():
            codes = torch.cat(
                [codes_of(net, scale * points.to(device).float(), t_last).cpu() for points in (samples, train_data)]
            )
        low, high = padded_box(codes, self.box_padding)
        decoder = copy.deepcopy(net.decoder).cpu().double().requires_grad_(False)
        image = DecoderImage(decoder, low, high, self.grid_points)
        sample_distance = image.distance(samples)
        train_distance = image.distance(train_data)
        result: dict[str, Any] = {
            "family": self.family,
            "sampler": repr(sampler),
            "num_samples": int(samples.shape[0]),
            "code_dim": image.code_dim,
            "code_box_low": low.tolist(),
            "code_box_high": high.tolist(),
            "sample_distance_to_decoder_image_predicted": 0.0,
            "sample_distance_to_decoder_image_max": float(sample_distance.max()),
            "sample_distance_to_decoder_image_median": float(sample_distance.median()),
            "train_distance_to_decoder_image_median": float(train_distance.median()),
            "train_distance_to_decoder_image_max": float(train_distance.max()),
            "sample_distance_to_training_set_median": float(distance_to_set(samples, train_data).median()),
            "tolerance": self.tolerance,
            "fraction_of_samples_within_tolerance": float((sample_distance <= self.tolerance).double().mean()),
        }
        flat_dim = samples.reshape(samples.shape[0], -1).shape[1]
        if self.figure and image.code_dim == 1 and flat_dim == 2:
            path = plots.support_figure(
                self.figure_path(run_dir),
                train_data.reshape(-1, 2),
                samples.reshape(-1, 2),
                image.curve(),
                f"1-D bottleneck: max sample distance {result['sample_distance_to_decoder_image_max']:.2g},\n"
                f"median training distance {result['train_distance_to_decoder_image_median']:.2g}",
            )
            result["figure"] = str(path)
        return result


def refit(denoiser: Denoiser, data: Tensor) -> Denoiser:
    """A copy of a closed-form denoiser fitted to ``data`` instead."""
    if denoiser.fit != "closed_form":
        raise UserError(
            f"the moment-pair check refits the denoiser on other data, which needs a closed-form family; "
            f"{type(denoiser).__name__} is trained by SGD (use denoiser.fit=closed_form)"
        )
    twin = copy.deepcopy(denoiser)
    device = next(iter(twin.buffers())).device
    twin.fit_data(data.to(device=device, dtype=torch.float32))
    return twin


class MomentPairCheck(TheoryCheck):
    """Polynomial family: equal moments up to order ``equal_up_to`` give equal samples.

    The training set must be a moment-pair member (``MomentPairDataModule`` with the same
    ``equal_up_to``): the check builds its partner (same moments up to ``equal_up_to``),
    refits the denoiser on it and samples from the run's seeds (``seed``: the run's seed).
    As a control it builds a pair from the same base that differs at order
    ``control_order`` and shows that those samples differ.
    """

    family = "polynomial"

    def __init__(
        self,
        equal_up_to: int = 4,
        control_order: int = 4,
        seed: int = 0,
        probe_points: int = 1000,
        sampler_batch_size: int = 4096,
        figure: bool = True,
    ) -> None:
        super().__init__(figure)
        if control_order < 2:
            raise UserError(f"theory.control_order={control_order} must be >= 2 (a polygon needs at least 2 sides)")
        self.equal_up_to = equal_up_to
        self.control_order = control_order
        self.seed = seed
        self.probe_points = probe_points
        self.sampler_batch_size = sampler_batch_size

    def _probe(self, first: nn.Module, second: nn.Module, data: Tensor, grid: NoiseGrid) -> float:
        """Largest output difference over noisy training points at every level."""
        gen = generator(self.seed, 0x9B0BE)
        rows = data[torch.randint(data.shape[0], (self.probe_points,), generator=gen)].float()
        worst = 0.0
        with torch.no_grad():
            for t in grid.levels.tolist():
                noisy = math.sqrt(1 - t) * rows + math.sqrt(t) * torch.randn(rows.shape, generator=gen)
                level = torch.full((rows.shape[0],), t)
                worst = max(worst, float((first(noisy, level) - second(noisy, level)).abs().max()))
        return worst

    def _samples(self, denoiser: nn.Module, grid: NoiseGrid, sampler: Sampler, shape: tuple[int, ...], count: int) -> Tensor:
        seeds = sample_seeds(self.seed, count)
        return sampler.sample(denoiser, grid, shape, seeds, batch_size=self.sampler_batch_size)

    def __call__(
        self,
        *,
        denoiser: nn.Module,
        train_data: Tensor,
        grid: NoiseGrid,
        sampler: Sampler,
        samples: Tensor,
        run_dir: Path,
    ) -> dict[str, Any]:
        sides = self.equal_up_to + 1
        base, radius, phase = split_polygons(train_data, sides)
        member = train_data.reshape(train_data.shape[0], -1).to(torch.float64)
        partner = attach_polygon(base, sides, radius, phase + math.pi / sides)
        shape = tuple(samples.shape[1:])
        partner_denoiser = refit(denoiser, partner)
        partner_samples = self._samples(partner_denoiser, grid, sampler, shape, samples.shape[0])

        control = moment_matched_pair(base, self.control_order - 1, radius)
        control_denoisers = [refit(denoiser, data) for data in control]
        control_samples = [self._samples(d, grid, sampler, shape, samples.shape[0]) for d in control_denoisers]

        matched, next_order = self.equal_up_to, self.equal_up_to + 1
        low, high = self.control_order - 1, self.control_order
        result: dict[str, Any] = {
            "family": self.family,
            "sampler": repr(sampler),
            "num_samples": int(samples.shape[0]),
            "polygon_radius": radius,
            "num_base_points": int(base.shape[0]),
            f"matched_pair_moment_gap_up_to_order_{matched}": max(moment_gap(member, partner, m) for m in range(1, matched + 1)),
            f"matched_pair_moment_gap_order_{next_order}": moment_gap(member, partner, next_order),
            "matched_pair_denoiser_max_difference": self._probe(denoiser, partner_denoiser, member, grid),
            "matched_pair_sample_max_difference_predicted": 0.0,
            "matched_pair_sample_max_difference": float((samples - partner_samples).abs().max()),
            f"control_pair_moment_gap_up_to_order_{low}": max(moment_gap(*control, m) for m in range(1, low + 1)),
            f"control_pair_moment_gap_order_{high}": moment_gap(*control, high),
            "control_pair_denoiser_max_difference": self._probe(*control_denoisers, control[0], grid),
            "control_pair_sample_max_difference": float((control_samples[0] - control_samples[1]).abs().max()),
            "sample_std": float(samples.reshape(samples.shape[0], -1).std(dim=0).mean()),
        }
        if self.figure and member.shape[1] == 2:
            path = plots.pair_figure(
                self.figure_path(run_dir),
                {"run's training set": member, "matched partner": partner},
                {
                    "run": samples.reshape(-1, 2),
                    "matched partner": partner_samples,
                    f"control (order {high}) a": control_samples[0],
                    f"control (order {high}) b": control_samples[1],
                },
                f"equal moments up to order {matched}: max sample difference "
                f"{result['matched_pair_sample_max_difference']:.2g}\ncontrol differing at order {high}: "
                f"{result['control_pair_sample_max_difference']:.2g}",
            )
            result["figure"] = str(path)
        return result


class CopyCheck(TheoryCheck):
    """Empirical family: every sample a training point (copy: d1 / d2 < 1/3)."""

    family = "empirical"

    def __call__(
        self,
        *,
        denoiser: nn.Module,
        train_data: Tensor,
        grid: NoiseGrid,
        sampler: Sampler,
        samples: Tensor,
        run_dir: Path,
    ) -> dict[str, Any]:
        distances, indices = nearest_two(samples, train_data)
        ratio = distances[:, 0] / distances[:, 1].clamp_min(1e-30)
        copies = ratio < COPY_RATIO
        count = int(samples.shape[0])
        num_train = int(train_data.shape[0])
        result: dict[str, Any] = {
            "family": self.family,
            "sampler": repr(sampler),
            "num_samples": count,
            "num_train": num_train,
            "copy_fraction_predicted_continuous_limit": 1.0,
            "copy_fraction_predicted_lower_bound": 1.0 - copy_failure_bound(train_data, float(grid.levels[0])),
            "copy_fraction_measured": float(copies.double().mean()),
            "nearest_distance_rms_per_dim_median": float(distances[:, 0].median()),
            "distance_ratio_median": float(ratio.median()),
            "distinct_training_points_copied": int(torch.unique(indices[copies, 0]).numel()),
            "distinct_training_points_expected_uniform": expected_distinct(num_train, count),
        }
        if self.figure:
            path = plots.ratio_figure(
                self.figure_path(run_dir),
                ratio,
                COPY_RATIO,
                f"copies: {result['copy_fraction_measured']:.3f} measured, "
                f">= {result['copy_fraction_predicted_lower_bound']:.3f} predicted",
            )
            result["figure"] = str(path)
        return result
