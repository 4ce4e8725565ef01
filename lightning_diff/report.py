"""``python -m lightning_diff.report sweep=DIR`` (or ``wandb_group=GROUP``): the study's answer as
one table and one figure.

For every run of a sweep (see :mod:`lightning_diff.run.study`) the table gives its name and data
half, parameter count, final validation loss (mean and per level, lowest noise first), the
memorized fraction (d1 / d2 < 1/3) and median d1 of its final measurement, FID where measured
(``fid@<n>``: n samples), the two-model agreement where both halves of the variant were run
(``data.split=half_a`` and ``half_b``; cosine similarity of same-seed samples), and wall time.
It is written as ``report.md`` and ``report.csv``. The figure ``report.png`` has one row per
run and one column per sample seed, the same seeds in every row, each sample beside its
nearest training image (in the run's own training set).

When the sweep holds analytic machines (``local_score``, ``pca_locality``) or ``machines=[...]``
names some (variants of the sweep, or run directories elsewhere, which then join the table and
the figure), every trained run is also explained (:mod:`lightning_diff.metrics.explanation`): median
r^2 against each machine and each baseline (closed-form linear, empirical, nearest), the share
of the best baseline's error each machine removes, and the best explanation; per level in
report.md's second table and, with Pearson r, in ``explanations.json``.

With ``controls=[...]`` (the reference variant trained with other seeds) the table ends with the
seed-to-seed floor (:mod:`lightning_diff.metrics.same_noise`) and marks every run whose same-noise
r^2 with the reference falls below it; ``report_floor.png`` draws it. A trained variant run at
several ``data.num_train`` gets the dataset-size table and ``report_n.png``
(:mod:`lightning_diff.metrics.dataset_size`). ``show_split=half_a`` keeps one data half in the
table and figure.
"""

import csv
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image

from lightning_diff.compare import denoiser_calls, first_calls
from lightning_diff.compose import build
from lightning_diff.errors import UserError
from lightning_diff.figures.grids import study_grid
from lightning_diff.figures.plots import dataset_size_figure, floor_figure
from lightning_diff.metrics.dataset_size import dataset_size_rows
from lightning_diff.metrics.explanation import Generated, explanations
from lightning_diff.metrics.nearest import nearest_two
from lightning_diff.metrics.same_noise import agreements, beyond_floor, reference_agreements, seed_floor
from lightning_diff.run.atomic import atomic_write_text
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import checkpoint_path
from lightning_diff.run.study import (
    CONVERGENCE_TOLERANCE,
    Run,
    convergence,
    load_samples,
    runs_in_directory,
    runs_in_wandb_group,
)
from lightning_diff.sample import load_denoiser

FIXED_COLUMNS = (
    "variant",
    "split",
    "num_parameters",
    "val_loss",
    "val_loss_per_level",
    "val_fall_last_quarter",
    "converged",
    "val_rise_last_quarter",
    "overfitting",
    "memorized_fraction",
    "d1_median",
)
TRAILING_COLUMNS = ("agreement", "vs_reference", "r2_vs_reference", "beyond_floor", "wall_time_s", "run")
HEADINGS = {
    "variant": "variant",
    "split": "data",
    "num_parameters": "parameters",
    "val_loss": "val loss",
    "val_loss_per_level": "val loss per level (low t first)",
    "val_fall_last_quarter": "largest fall of a level's val loss over the last quarter",
    "val_rise_last_quarter": "largest rise of a level's val loss over the last quarter",
    "converged": "converged (no level still falls by the tolerance)",
    "overfitting": "overfitting (a level rose by the tolerance)",
    "memorized_fraction": "memorized",
    "d1_median": "median d1",
    "agreement": "agreement",
    "vs_reference": "same-noise agreement with the reference",
    "r2_vs_reference": "same-noise r2 with the reference",
    "beyond_floor": "differs beyond the seed floor",
    "wall_time_s": "wall time (s)",
    "run": "run",
}
LABEL_CHARACTERS = 28  # a row label's line length in the figure's label strip


def fid_columns(runs: list[Run]) -> list[str]:
    """The FID keys any run measured (``fid@64``, ``fd_<model>@1k``, ...), sorted."""
    return sorted({key for run in runs for key in run.measure if key.startswith(("fid@", "fd_"))})


def explanation_columns(explained: dict[int, dict[str, Any]]) -> list[str]:
    """``r2 vs <explainer>`` for every explainer, ``removes <machine>`` for every machine, the best."""
    if not explained:
        return []
    explainers = sorted({name for result in explained.values() for name in result["r2_median"]})
    machines = sorted({name for result in explained.values() for name in result.get("removes", {})})
    return [*(f"r2 vs {name}" for name in explainers), *(f"removes {name}" for name in machines), "best explanation"]


def explanation_cells(result: dict[str, Any] | None, columns: list[str]) -> dict[str, Any]:
    cells: dict[str, Any] = dict.fromkeys(columns)
    if result is None:
        return cells
    for name, value in result["r2_median"].items():
        cells[f"r2 vs {name}"] = value
    for name, value in result.get("removes", {}).items():
        cells[f"removes {name}"] = value
    cells["best explanation"] = result["best_explanation"]
    return cells


def floor_row(columns: list[str], floor: dict[str, Any]) -> dict[str, Any]:
    """The table's row for the seed-to-seed floor: mean +- sd (min-max) over the seed pairs."""

    def cell(values: dict[str, float]) -> str:
        return f"{values['mean']:.4g} ± {values['sd']:.2g} [{values['min']:.4g}, {values['max']:.4g}]"

    row: dict[str, Any] = dict.fromkeys(columns)
    row.update(
        variant=f"seed-to-seed floor ({floor['reference']} x {len(floor['runs'])} seeds)",
        split=floor["split"],
        vs_reference=cell(floor["agreement"]),
        r2_vs_reference=cell(floor["r2"]),
    )
    return row


def rows(
    runs: list[Run],
    reference: str | None = None,
    explained: dict[int, dict[str, Any]] | None = None,
    tolerance: float = CONVERGENCE_TOLERANCE,
    floor: dict[str, Any] | None = None,
    agreement: dict[int, float] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The table's columns and one row of raw values per run (None where a value is missing), and
    with a seed ``floor`` a last row holding it. ``agreement``: the halves' agreements when the
    caller has them already (:func:`~lightning_diff.metrics.same_noise.agreements`)."""
    explained = explained or {}
    explaining = explanation_columns(explained)
    fids = fid_columns(runs)
    agreement = agreements(runs) if agreement is None else agreement
    vs_reference = reference_agreements(runs, reference)
    table = []
    for run in runs:
        last_quarter = convergence(run, tolerance)
        row = {
            "variant": run.name,
            "split": run.split,
            "num_parameters": run.num_parameters,
            "val_loss": run.val_loss,
            "val_loss_per_level": run.val_losses or None,
            "val_fall_last_quarter": last_quarter.fall,
            "converged": last_quarter.converged,
            "val_rise_last_quarter": last_quarter.rise,
            "overfitting": last_quarter.overfitting,
            "memorized_fraction": run.measure.get("memorized_fraction"),
            "d1_median": run.measure.get("d1_median"),
        }
        row.update({key: run.measure.get(key) for key in fids})
        row.update(explanation_cells(explained.get(id(run)), explaining))
        same_noise_agreement, same_noise_r2 = vs_reference.get(id(run), (None, None))
        row.update(
            {
                "agreement": agreement.get(id(run)),
                "vs_reference": same_noise_agreement,
                "r2_vs_reference": same_noise_r2,
                "beyond_floor": beyond_floor(run, same_noise_r2, floor),
                "wall_time_s": run.wall_time_s,
                "run": run.location,
            }
        )
        table.append(row)
    columns = [*FIXED_COLUMNS, *fids, *explaining, *TRAILING_COLUMNS]
    if floor is not None:
        table.append(floor_row(columns, floor))
    return columns, table


def _markdown_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "num_parameters":
        return f"{int(value):,}"
    if column == "val_loss_per_level":
        return " ".join(f"{level:.3g}" for level in value)
    if column == "wall_time_s":
        return f"{value:.0f}"
    if column in ("val_fall_last_quarter", "val_rise_last_quarter"):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_markdown(path: Path, columns: list[str], table: list[dict[str, Any]]) -> str:
    """The table as Markdown (4 significant digits); returns the text."""
    lines = [
        "| " + " | ".join(HEADINGS.get(column, column) for column in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_markdown_cell(column, row[column]) for column in columns) + " |" for row in table]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_csv(path: Path, columns: list[str], table: list[dict[str, Any]]) -> None:
    """The table as CSV with full-precision values; the per-level losses space-separated in one cell."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in table:
            cells = []
            for column in columns:
                value = row[column]
                if value is None:
                    cells.append("")
                elif column == "val_loss_per_level":
                    cells.append(" ".join(repr(level) for level in value))
                else:
                    cells.append(repr(value) if isinstance(value, float) else str(value))
            writer.writerow(cells)


def figure(path: Path, runs: list[Run], columns: int) -> Path | None:
    """The sample | nearest-training-image grid of every run with image samples; None when no run has any."""
    shown = []
    for run in runs:
        if run.samples is None:
            print(f"figure: {run.name} ({run.location}) left out: no samples.npz on this machine", file=sys.stderr)
            continue
        samples, seeds = load_samples(run.samples)
        if samples.dim() != 4:
            print(f"figure: {run.name} left out: its samples are not images", file=sys.stderr)
            continue
        shown.append((run, samples, seeds))
    if not shown:
        return None
    count = min(columns, *(samples.shape[0] for _, samples, _ in shown))
    reference_run, _, reference_seeds = shown[0]
    wanted = reference_seeds[:count]
    train_sets: dict[str, torch.Tensor] = {}
    labels, picked, nearest = [], [], []
    for run, samples, seeds in shown:
        position = {int(seed): i for i, seed in enumerate(seeds)}
        if any(int(seed) not in position for seed in wanted):
            raise UserError(
                f"{run.name} ({run.location}) was not sampled from the seeds of {reference_run.name} "
                f"({reference_run.location}); the figure shows samples from the same noise in every row: give all "
                "runs the same seed, or report only the table with figure=false"
            )
        row = samples[[position[int(seed)] for seed in wanted]]
        if picked and row.shape[1:] != picked[0].shape[1:]:
            raise UserError(
                f"{run.name} ({run.location}) made images of shape {tuple(row.shape[1:])}, {shown[0][0].name} of "
                f"{tuple(picked[0].shape[1:])}; the figure needs one image size: report them from separate sweep "
                "directories, or only the table with figure=false"
            )
        data_config = run.config.get("data") or {}
        key = json.dumps(data_config, sort_keys=True, default=str)
        if key not in train_sets:
            try:
                train_sets[key] = build(data_config, "data").train_data
            except UserError as err:
                raise UserError(
                    f"the figure pairs each sample of {run.name} with its nearest image in the run's training set, "
                    f"which could not be loaded here ({err}); run the report where the data are, or figure=false"
                ) from err
        train = train_sets[key]
        _, index = nearest_two(row, train)
        labels.append(textwrap.fill(f"{run.name} ({run.split})", LABEL_CHARACTERS))
        picked.append(row)
        nearest.append(train[index[:, 0]])
    Image.fromarray(study_grid(labels, picked, nearest)).save(path)
    return path


def write_dataset_size(out: Path, table: list[dict[str, Any]], picture: bool) -> str:
    """The dataset-size table (appended to report.md), ``dataset_size.json`` and with ``picture``
    ``report_n.png``; returns the table."""
    atomic_write_text(out / "dataset_size.json", json.dumps(table, indent=2) + "\n")
    columns = ["variant", "N", "memorized", "two-model agreement", "r2 vs empirical", "runs"]
    lines = [
        "",
        "Training-set size: memorized fraction and r^2 to the empirical denoiser (mean over the runs at",
        "each N), two-model agreement of the halves (each half-model sees N/2 images).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_markdown_cell(column, row[column]) for column in columns) + " |" for row in table]
    text = "\n".join(lines) + "\n"
    with (out / "report.md").open("a") as handle:
        handle.write(text)
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in table:
        for measure in ("memorized", "two-model agreement", "r2 vs empirical"):
            if row[measure] is not None:
                series.setdefault(row["variant"], {}).setdefault(measure, []).append((row["N"], row[measure]))
    if picture:
        dataset_size_figure(out / "report_n.png", series, "memorization to generalization: the same networks at several N")
    return text


def write_floor_figure(out: Path, table: list[dict[str, Any]], floor: dict[str, Any]) -> Path:
    """``report_floor.png``: every run's same-noise agreement and r^2 with the reference on the
    floor's data half, against the seed-to-seed band."""
    shown = [row for row in table if row["split"] == floor["split"] and isinstance(row["r2_vs_reference"], float)]
    labels = [row["variant"] for row in shown]
    values = {
        "r2": [row["r2_vs_reference"] for row in shown],
        "agreement": [row["vs_reference"] for row in shown],
    }
    title = f"same noise, {floor['reference']} as the reference ({floor['split']}); band: {len(floor['runs'])} seeds of it"
    return floor_figure(out / "report_floor.png", labels, values, floor, title)


def with_machines(runs: list[Run], machines: list[str]) -> tuple[list[Run], set[str]]:
    """The runs plus those of ``machines`` entries that are run directories; the machines' names."""
    named, added = set(), []
    for entry in machines:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            found = runs_in_directory(path.resolve())
            added += found
            named |= {run.name for run in found}
        elif any(run.name == str(entry) for run in runs):
            named.add(str(entry))
        else:
            raise UserError(
                f"machines: {entry!r} is neither a variant of the report's runs ({', '.join(sorted({r.name for r in runs}))}) "
                "nor a run directory; name a variant of the sweep or give the machine run's directory"
            )
    return runs + added, named


@torch.no_grad()
def generated(run: Run, device: str) -> Generated | None:
    """What ``run`` generated from its seeds; None without samples on this machine."""
    if run.samples is None:
        return None
    samples, seeds = load_samples(run.samples)
    trajectory = None
    ckpt = checkpoint_path(Path(run.location))
    if ckpt.is_file():
        denoiser, info = load_denoiser(ckpt)
        sampler = str(info["config"]["sampler"]["name"])
        calls = first_calls(denoiser_calls(denoiser.to(device), info, sampler, [int(s) for s in seeds], device))
        trajectory = torch.stack([out.double() for _, _, out in calls])
    return Generated(samples.double(), seeds, trajectory)


def write_explanations(out: Path, runs: list[Run], explained: dict[int, dict[str, Any]]) -> str:
    """``explanations.json`` and the per-level Markdown table (appended to report.md); returns the table."""
    by_name = {f"{run.name} ({run.split})": explained[id(run)] for run in runs if id(run) in explained}
    atomic_write_text(out / "explanations.json", json.dumps(by_name, indent=2) + "\n")
    if not any(result.get("removes_per_level") for result in by_name.values()):
        return ""  # no machine and baseline with checkpoints on this machine: no trajectories
    lines = [
        "",
        "Share of the best baseline's error each machine removes, per level (highest noise first): x0",
        "predictions along each model's own trajectory from the same noise, median over samples.",
        "",
        "| run | best baseline | machine | per level |",
        "|---|---|---|---|",
    ]
    for name, result in by_name.items():
        for machine, shares in result.get("removes_per_level", {}).items():
            cells = " ".join(f"{share:.3g}" for share in shares)
            lines.append(f"| {name} | {result['best_baseline']} | {machine} | {cells} |")
    text = "\n".join(lines) + "\n"
    with (out / "report.md").open("a") as handle:
        handle.write(text)
    return text


def report(cfg: DictConfig) -> dict[str, Any]:
    """Write report.md, report.csv and report.png for the runs ``cfg`` names; returns their paths and rows."""
    if (cfg.get("sweep") is None) == (cfg.get("wandb_group") is None):
        raise UserError("give exactly one of sweep=<sweep directory> or wandb_group=<W&B group>")
    if int(cfg.columns) < 1:
        raise UserError(f"columns={cfg.columns} must be at least 1 (samples per run in the figure)")
    if cfg.get("sweep") is not None:
        sweep = Path(str(cfg.sweep)).expanduser().resolve()
        runs = runs_in_directory(sweep)
        out = Path(str(cfg.out)).expanduser() if cfg.get("out") else sweep
    else:
        runs = runs_in_wandb_group(str(cfg.wandb_project), str(cfg.wandb_group))
        out = Path(str(cfg.out)).expanduser() if cfg.get("out") else Path(f"report-{cfg.wandb_group}")
    out.mkdir(parents=True, exist_ok=True)
    runs, named = with_machines(runs, list(cfg.get("machines") or []))
    explained = explanations(runs, named, lambda run: generated(run, str(cfg.device)))
    floor = seed_floor(runs, cfg.get("reference"), [str(name) for name in cfg.get("controls") or []])
    agreement = agreements(runs)  # read by the table and the dataset-size table: loaded once
    columns, table = rows(runs, cfg.get("reference"), explained, float(cfg.convergence_tolerance), floor, agreement)
    for row in table:
        where = f"{row['variant']} ({row['split']})"
        if row["converged"] == "no":
            print(f"not converged: {where}, a level's validation loss still fell "
                  f"{row['val_fall_last_quarter']:.1%} over the last quarter: train it longer", file=sys.stderr)
        if row["overfitting"] == "yes":
            print(f"overfitting: {where}, a level's validation loss rose {row['val_rise_last_quarter']:.1%} "
                  "over the last quarter: more steps make it worse", file=sys.stderr)
    shown = runs
    if cfg.get("show_split") is not None:
        if cfg.show_split not in {run.split for run in runs}:
            raise UserError(
                f"show_split={cfg.show_split}: no run used that data half (the runs': "
                f"{', '.join(sorted({run.split for run in runs}))}); use one of them or null for all"
            )
        shown = [run for run in runs if run.split == cfg.show_split]
        table = [row for row in table if row["split"] == cfg.show_split]
    markdown = write_markdown(out / "report.md", columns, table)
    if explained:
        markdown += write_explanations(out, runs, explained)
    sizes = dataset_size_rows(runs, explained, agreement)
    if sizes:
        markdown += write_dataset_size(out, sizes, bool(cfg.figure))
    write_csv(out / "report.csv", columns, table)
    if floor is not None:
        atomic_write_text(out / "seed_floor.json", json.dumps(floor, indent=2) + "\n")
        if cfg.figure:
            print(f"figure: {write_floor_figure(out, table, floor)}")
    picture = figure(out / "report.png", shown, int(cfg.columns)) if cfg.figure else None
    print(markdown)
    print(f"table:  {out / 'report.md'}\n        {out / 'report.csv'}")
    if picture is not None:
        print(f"figure: {picture}")
    elif cfg.figure:
        print("figure: none (no run has image samples on this machine)")
    return {"markdown": out / "report.md", "csv": out / "report.csv", "figure": picture, "rows": table}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: report(cfg))


if __name__ == "__main__":
    check_command_line("report")
    main()
