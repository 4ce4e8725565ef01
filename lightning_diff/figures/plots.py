"""Figures that put a run's samples next to the theory's prediction (PNG, Agg backend)."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor


def _save(fig: "plt.Figure", path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def variance_figure(
    path: Path, training: Tensor, predicted: Tensor, measured: Tensor, sampler: str, rank: int
) -> Path:
    """Per-eigendirection variance: training eigenvalue, exact finite-grid prediction, measured."""
    fig, ax = plt.subplots(figsize=(6, 4))
    index = list(range(1, rank + 1))
    ax.semilogy(index, training[:rank].tolist(), "k--", label="training eigenvalue (continuous limit)")
    ax.semilogy(index, predicted[:rank].tolist(), "o-", label=f"predicted, {sampler} on this grid")
    ax.semilogy(index, measured[:rank].tolist(), "x", markersize=9, label="measured from samples")
    ax.set_xlabel("principal direction (by training eigenvalue)")
    ax.set_ylabel("variance")
    ax.set_title("linear denoiser: generated variance per eigendirection")
    ax.legend(fontsize=8)
    return _save(fig, path)


def support_figure(path: Path, train_data: Tensor, samples: Tensor, curve: Tensor, title: str) -> Path:
    """2-D scatter of training data and samples with the predicted support drawn as a line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(train_data[:, 0], train_data[:, 1], s=3, c="0.7", label="training data")
    ax.plot(curve[:, 0], curve[:, 1], "r-", lw=1, label="predicted support (last decoder)")
    ax.scatter(samples[:, 0], samples[:, 1], s=4, c="tab:blue", label="samples")
    # Frame the data and the samples: the decoded curve may run far beyond them.
    shown = torch.cat([train_data, samples]).double()
    low, high = shown.min(dim=0).values, shown.max(dim=0).values
    pad = 0.1 * (high - low).max()
    ax.set_xlim(float(low[0] - pad), float(high[0] + pad))
    ax.set_ylim(float(low[1] - pad), float(high[1] + pad))
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, markerscale=3)
    return _save(fig, path)


def pair_figure(path: Path, sets: dict[str, Tensor], samples: dict[str, Tensor], title: str) -> Path:
    """Side by side: the pairs' training sets, and their samples from the same seeds."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    for (name, points), marker in zip(sets.items(), ("o", "+", "s", "x")):
        left.scatter(points[:, 0], points[:, 1], s=6, marker=marker, label=name)
    for (name, points), marker in zip(samples.items(), ("o", "+", "s", "x")):
        right.scatter(points[:, 0], points[:, 1], s=6, marker=marker, label=name)
    left.set_title("training sets")
    right.set_title("samples from the same seeds")
    for ax in (left, right):
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=7, markerscale=2)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def ratio_figure(path: Path, ratios: Tensor, threshold: float, title: str) -> Path:
    """Histogram of nearest / second-nearest training distance ratios with the copy threshold."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(ratios.tolist(), bins=50, range=(0.0, 1.0))
    ax.axvline(threshold, color="r", ls="--", label=f"copy threshold {threshold:.3g}")
    ax.set_xlabel("d1 / d2 (nearest / second-nearest training image)")
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def per_level_figure(path: Path, levels: list[float], series: dict[str, list[float]], ylabel: str, title: str) -> Path:
    """One line per series against the noise level t (highest noise first, as the sampler visits them)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        ax.plot(range(len(values)), values, marker="o", label=label)
    ax.set_xticks(range(len(levels)), [f"{t:.3g}" for t in levels], rotation=45, fontsize=7)
    ax.set_xlabel("noise level t (sampling order)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def calibration_figure(
    path: Path, levels: list[float], candidates: list[float], table: list[list[float]], knob: str = "patch size"
) -> Path:
    """Median single-step r^2 against the calibrated knob (a patch size, a threshold), one line per level."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for t, row in zip(levels, table):
        ax.plot(candidates, row, marker="o", label=f"t={t:.3g}")
    ax.set_xlabel(knob.replace("_", " "))
    ax.set_ylabel("median single-step r^2")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def floor_figure(path: Path, labels: list[str], values: dict[str, list[float | None]], floor: dict[str, dict[str, float]], title: str) -> Path:
    """One horizontal bar per run for each same-noise measure (panels), with the seed-to-seed floor
    drawn as a band (min to max over seed pairs) and a line (their mean): a bar left of the band
    differs from the reference by more than training noise does."""
    fig, axes = plt.subplots(1, len(values), figsize=(4.5 * len(values), 0.3 * len(labels) + 1.5), sharey=True)
    axes = [axes] if len(values) == 1 else list(axes)
    positions = list(range(len(labels)))
    for ax, (measure, bars) in zip(axes, values.items()):
        shown = [float("nan") if value is None else value for value in bars]
        ax.barh(positions, shown, color="tab:blue")
        ax.axvspan(floor[measure]["min"], floor[measure]["max"], color="tab:orange", alpha=0.3, label="seed-to-seed range")
        ax.axvline(floor[measure]["mean"], color="tab:orange", ls="--", label="seed-to-seed mean")
        finite = [value for value in shown if math.isfinite(value)]
        ax.set_xlim(min([*finite, floor[measure]["min"]]) - 0.05, 1.0)
        ax.set_xlabel(measure)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_yticks(positions, labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def dataset_size_figure(path: Path, series: dict[str, dict[str, list[tuple[int, float]]]], title: str) -> Path:
    """One panel per measure (memorized fraction, two-model agreement, r^2 to the empirical
    denoiser, ...) against the training-set size N on a log axis, one line per variant."""
    measures = sorted({measure for by_measure in series.values() for measure in by_measure})
    fig, axes = plt.subplots(1, len(measures), figsize=(4 * len(measures), 3.5))
    axes = [axes] if len(measures) == 1 else list(axes)
    for ax, measure in zip(axes, measures):
        for variant, by_measure in series.items():
            points = sorted(by_measure.get(measure, []))
            if points:
                ax.semilogx([n for n, _ in points], [v for _, v in points], marker="o", label=variant)
        ax.set_xlabel("training images N (each half-model sees N/2)")
        ax.set_ylabel(measure)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
