"""``python -m lightning_diff.compare a=PATH b=PATH [out=FILE.json]``: how well one generator
predicts another from the same noise.

PATH is a run directory (its ``samples.npz``) or an ``.npz`` with ``samples`` and ``seeds``;
``a`` is the reference and the seeds must match. The JSON (printed, and written to ``out``)
holds, for the final samples:

- ``r2_per_sample``, ``pearson_r_per_sample`` (:mod:`lightning_diff.metrics.r2`) and
  ``agreement_cosine_per_sample``, the cosine of a_i - m and b_i - m with m the mean of all
  samples of both (:mod:`lightning_diff.metrics.agreement`);
- their summaries ``r2_samples_median``, ``r2_samples_mean``, ``pearson_r_samples_median``,
  ``agreement_cosine_mean`` and ``agreement_cosine_median``;
- for each summary ``<summary>_ci = {value, low, high}``: its percentile bootstrap interval over
  samples (:mod:`lightning_diff.metrics.intervals`; ``value`` is the summary itself). The
  settings ``level`` (0.95), ``resamples`` (2000) and ``bootstrap_seed`` (0) are echoed in
  ``interval_settings``. m is computed once from all samples and held fixed while the pairs
  are resampled, so the agreement's interval leaves out m's own sampling error.

When both are run directories with checkpoints, also per denoiser call along the sampler,
highest noise first, the median r^2 over samples and, in ``..._per_level_ci``, a list of its
intervals ``{value, low, high}`` level by level:

- ``r2_single_step_per_level``: b's denoiser applied to a's own sampling states, against a's
  denoiser output there;
- ``r2_trajectory_per_level``: each model's x0 prediction along its own trajectory from the
  same noise, b against a.

The trajectories use a's sampler and grid; the grids of the two runs must agree. ``wandb=true``
logs every number, each interval's ends as ``<summary>_low`` and ``<summary>_high``.
"""

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor

from lightning_diff.errors import UserError
from lightning_diff.figures.grids import difference_grid
from lightning_diff.figures.plots import per_level_figure
from lightning_diff.metrics.agreement import TwoModelAgreement
from lightning_diff.metrics.intervals import Statistic, bootstrap, nan_mean, nan_median
from lightning_diff.metrics.r2 import SameNoiseR2, per_sample_r2
from lightning_diff.run.atomic import atomic_write_text
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import checkpoint_path, read_sample_file
from lightning_diff.run.wandb_log import log_to_wandb
from lightning_diff.trained import TrainedRun, same_levels

# The summaries of per-sample values compare reports, each with an interval over samples:
# (the summary's key, the per-sample values' key, the statistic).
SUMMARIES: tuple[tuple[str, str, Statistic], ...] = (
    ("r2_samples_median", "r2_per_sample", nan_median),
    ("r2_samples_mean", "r2_per_sample", nan_mean),
    ("pearson_r_samples_median", "pearson_r_per_sample", nan_median),
    ("agreement_cosine_mean", "agreement_cosine_per_sample", nan_mean),
    ("agreement_cosine_median", "agreement_cosine_per_sample", nan_median),
)


@dataclass
class Side:
    """One generator's samples (and seeds, grid), and its run directory when it has a checkpoint."""

    path: Path
    samples: Tensor
    seeds: list[int]
    levels: list[float] | None
    run_dir: Path | None


def load_side(key: str, value: str) -> Side:
    """The samples behind ``a=`` or ``b=``, or one :class:`UserError` naming what is missing."""
    path = Path(value).expanduser()
    run_dir = None
    if path.is_dir():
        run_dir = path if checkpoint_path(path).is_file() else None
        path = path / "samples.npz"
    if not path.is_file():
        raise UserError(f"{key}={value}: no such run directory (with samples.npz) or .npz file")
    stored = read_sample_file(path)
    samples = torch.from_numpy(np.asarray(stored.samples, dtype=np.float64))
    seeds = [int(s) for s in stored.seeds]
    levels = None if stored.levels is None else [float(t) for t in stored.levels]
    return Side(path, samples, seeds, levels, run_dir)


def check_pair(a: Side, b: Side) -> None:
    """Same data shape, same seeds in the same order, same grid where both record one."""
    if a.samples.shape[1:] != b.samples.shape[1:]:
        raise UserError(
            f"a={a.path} and b={b.path} hold samples of different data shapes, {tuple(a.samples.shape[1:])} and "
            f"{tuple(b.samples.shape[1:])}; compare runs on the same data"
        )
    if a.seeds != b.seeds:
        first = next((i for i, (x, y) in enumerate(zip(a.seeds, b.seeds)) if x != y), min(len(a.seeds), len(b.seeds)))
        seen = [a.seeds[first] if first < len(a.seeds) else "none", b.seeds[first] if first < len(b.seeds) else "none"]
        raise UserError(
            f"the seeds differ first at sample {first}: a has {seen[0]}, b has {seen[1]} ({len(a.seeds)} and "
            f"{len(b.seeds)} seeds); draw both with the same seed and num_samples"
        )
    if a.levels is not None and b.levels is not None and not same_grid(a.levels, b.levels):
        raise UserError(f"a={a.path} and b={b.path} were sampled on different grids ({len(a.levels)} and "
                        f"{len(b.levels)} levels); compare runs on the same grid")


def same_grid(first: list[float], second: list[float]) -> bool:
    return len(first) == len(second) and bool(np.allclose(first, second, rtol=0, atol=1e-12))


def bootstrap_options(cfg: DictConfig) -> dict[str, Any]:
    """:func:`~lightning_diff.metrics.intervals.bootstrap`'s options from the config's ``resamples``,
    ``level`` and ``bootstrap_seed``."""
    return {"resamples": int(cfg.resamples), "level": float(cfg.level), "seed": int(cfg.bootstrap_seed)}


def final_samples(a: Side, b: Side, options: dict[str, Any]) -> dict[str, Any]:
    """Per-sample r^2, Pearson r and agreement cosine of the final samples, their summaries, and
    each summary's interval over samples (``<summary>_ci``)."""
    r2, agreement = SameNoiseR2(), TwoModelAgreement()
    r2.update(a.samples, b.samples)
    agreement.update(a.samples, b.samples)
    values = {**r2.compute(), "agreement_cosine_per_sample": agreement.per_sample(), **agreement.compute()}
    result: dict[str, Any] = {key: value.tolist() if value.dim() else float(value) for key, value in values.items()}
    for key, per_sample, statistic in SUMMARIES:
        result[f"{key}_ci"] = bootstrap(values[per_sample], statistic, **options).as_dict()
    return result


@torch.no_grad()
def per_level_r2(a: Side, b: Side, weights: str, device: str, options: dict[str, Any]) -> dict[str, Any]:
    """Single-step and trajectory median r^2 per denoiser call and their intervals over samples
    (both sides need checkpoints)."""
    assert a.run_dir is not None and b.run_dir is not None
    run_a, run_b = TrainedRun.load(a.run_dir, weights).to(device), TrainedRun.load(b.run_dir, weights).to(device)
    if not same_levels(run_a.grid, run_b.grid):
        raise UserError(f"the runs {a.run_dir} and {b.run_dir} were trained on different grids; compare runs on one grid")
    run_b.sampler = run_a.sampler  # both trajectories with a's sampler, from a's seeds
    calls_a = run_a.calls(a.seeds, device, first_per_level=False)
    calls_b = run_b.calls(a.seeds, device, first_per_level=False)
    single = [
        per_sample_r2(call.x0, run_b.denoiser(call.y.to(device), torch.full((call.y.shape[0],), call.t, device=device)).cpu())
        for call in calls_a
    ]
    trajectory = [per_sample_r2(call_a.x0, call_b.x0) for call_a, call_b in zip(calls_a, calls_b)]
    result: dict[str, Any] = {"levels_called": [call.t for call in calls_a], "sampler": repr(run_a.sampler)}
    for name, per_level in (("single_step", single), ("trajectory", trajectory)):
        intervals = [bootstrap(r2, nan_median, **options) for r2 in per_level]
        result[f"r2_{name}_per_level"] = [interval.value for interval in intervals]
        result[f"r2_{name}_per_level_ci"] = [interval.as_dict() for interval in intervals]
    return result


def logged_numbers(result: dict[str, Any]) -> dict[str, float]:
    """What W&B gets: every float of ``result``, and each summary's interval ends as
    ``<summary>_low`` and ``<summary>_high``."""
    numbers = {key: value for key, value in result.items() if isinstance(value, float)}
    for key, _, _ in SUMMARIES:
        numbers[f"{key}_low"], numbers[f"{key}_high"] = result[f"{key}_ci"]["low"], result[f"{key}_ci"]["high"]
    return numbers


def compare(cfg: DictConfig) -> dict[str, Any]:
    """The comparison ``cfg`` asks for, as a dict (also printed, and written to ``out``)."""
    a, b = load_side("a", str(cfg.a)), load_side("b", str(cfg.b))
    check_pair(a, b)
    options = bootstrap_options(cfg)
    result: dict[str, Any] = {"a": str(a.path), "b": str(b.path), "num_samples": len(a.seeds)}
    result.update(final_samples(a, b, options))
    result["interval_settings"] = {
        "level": options["level"], "resamples": options["resamples"], "bootstrap_seed": options["seed"]
    }
    if a.run_dir is not None and b.run_dir is not None:
        result.update(per_level_r2(a, b, str(cfg.weights), str(cfg.device), options))
    text = json.dumps(result, indent=2)
    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else None
    if out is not None:
        atomic_write_text(out, text + "\n")
    figures = write_figures(a, b, result, out.parent, out.stem) if out is not None else {}
    if cfg.wandb:
        numbers = logged_numbers(result)
        name = f"{a.path.parent.name} vs {b.path.parent.name}"
        with tempfile.TemporaryDirectory(prefix="compare_") as scratch:  # W&B copies the images it logs
            if out is None:
                figures = write_figures(a, b, result, Path(scratch), "compare")
            where = out.parent if out is not None else Path.cwd()
            log_to_wandb(str(cfg.wandb_project), where, numbers, figures, job_type="compare", name=name)
    print(text)
    sys.stdout.flush()
    return result


def write_figures(a: Side, b: Side, result: dict[str, Any], folder: Path, stem: str) -> dict[str, Path]:
    """The a | b | |a - b| grid of image samples and, with per-level numbers, their plot, as
    ``<folder>/<stem>.grid.png`` and ``<stem>.levels.png``; their W&B keys to their paths."""
    figures = {}
    if a.samples.dim() == 4:
        figures["compare/grid"] = folder / f"{stem}.grid.png"
        Image.fromarray(difference_grid(a.samples, b.samples)).save(figures["compare/grid"])
    if "r2_single_step_per_level" in result:
        series = {key: result[f"r2_{key}_per_level"] for key in ("single_step", "trajectory")}
        figures["compare/per_level"] = per_level_figure(
            folder / f"{stem}.levels.png", result["levels_called"], series, "median r^2 (b against a)", "same-noise r^2 per level"
        )
    return figures


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: compare(cfg))


if __name__ == "__main__":
    check_command_line("compare")
    main()
