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

Every run's same-noise agreement and r^2 with the reference are read across training seeds (its
seed against reference runs of other seeds: the pairs are named in the table), each with its 95%
bootstrap interval over samples, like the halves' agreement, the explanations and the memorized
fraction (exact interval). With ``controls=[...]`` (the reference variant trained with other
seeds) the table ends with the seed-to-seed floor (:mod:`lightning_diff.metrics.same_noise`; every
seed pair in ``seed_floor.json``) and a paired test marks every run whose r^2 falls below it;
``report_floor.png`` draws it. Each row gets a verdict computed from those intervals
(:mod:`lightning_diff.metrics.verdicts`), counted on stdout and in ``verdicts.json``. A trained variant run at
several ``data.num_train`` gets the dataset-size table and ``report_n.png``
(:mod:`lightning_diff.metrics.dataset_size`). ``show_split=half_a`` keeps one data half in the
table and figure.
"""

import csv
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image

from lightning_diff.compose import build
from lightning_diff.errors import UserError
from lightning_diff.figures.grids import study_grid
from lightning_diff.figures.plots import dataset_size_figure, floor_figure
from lightning_diff.metrics.dataset_size import dataset_size_rows
from lightning_diff.metrics.explanation import Generated, explanations
from lightning_diff.metrics.intervals import Interval
from lightning_diff.metrics.nearest import nearest_two
from lightning_diff.metrics.same_noise import Floor, agreements, seed_floor
from lightning_diff.metrics.study_table import HEADINGS, rows
from lightning_diff.metrics.verdicts import verdicts
from lightning_diff.run.atomic import atomic_write_text
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import checkpoint_path
from lightning_diff.run.study import Run, load_samples, runs_in_directory, runs_in_wandb_group
from lightning_diff.trained import TrainedRun

LABEL_CHARACTERS = 28  # a row label's line length in the figure's label strip


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


def as_json(value: Any) -> str:
    """``value`` as indented JSON, intervals as {value, low, high}."""

    def interval(item: Any) -> dict[str, float]:
        if not isinstance(item, Interval):
            raise TypeError(f"{type(item).__name__} is not JSON serializable")
        return item.as_dict()

    return json.dumps(value, indent=2, default=interval) + "\n"


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


def csv_columns(columns: list[str], table: list[dict[str, Any]]) -> list[str]:
    """The CSV's columns: a column holding intervals becomes three (``<column>``, ``_low``, ``_high``)."""
    expanded = []
    for column in columns:
        expanded.append(column)
        if any(isinstance(row.get(column), Interval) for row in table):
            expanded += [f"{column}_low", f"{column}_high"]
    return expanded


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(repr(item) for item in value)
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(path: Path, columns: list[str], table: list[dict[str, Any]]) -> None:
    """The table as CSV with full-precision values; intervals in three columns, the per-level losses
    space-separated in one cell."""
    header = csv_columns(columns, table)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in table:
            cells = []
            for column in header:
                base, _, end = column.rpartition("_")
                if column not in row and end in ("low", "high") and isinstance(row.get(base), Interval):
                    cells.append(csv_cell(getattr(row[base], end)))
                    continue
                value = row.get(column)
                cells.append(csv_cell(value.value if isinstance(value, Interval) else value))
            writer.writerow(cells)


def labels_of(runs: list[Run]) -> dict[int, str]:
    """Each run's name in the figure and explanations.json: ``variant (half)``, with the training seed
    where another run shares both (a variant trained with a second seed is its own run)."""
    plain = {id(run): f"{run.name} ({run.split})" for run in runs}
    uses = Counter(plain.values())
    return {
        id(run): f"{run.name} ({run.split}, seed {run.config.get('seed')})" if uses[plain[id(run)]] > 1 else plain[id(run)]
        for run in runs
    }


def figure(path: Path, runs: list[Run], columns: int, names: dict[int, str]) -> Path | None:
    """The sample | nearest-training-image grid of every run with image samples (rows named by ``names``:
    :func:`labels_of`); None when no run has any."""
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
        labels.append(textwrap.fill(names[id(run)], LABEL_CHARACTERS))
        picked.append(row)
        nearest.append(train[index[:, 0]])
    Image.fromarray(study_grid(labels, picked, nearest)).save(path)
    return path


def write_dataset_size(out: Path, table: list[dict[str, Any]], picture: bool) -> str:
    """The dataset-size table (appended to report.md), ``dataset_size.json`` and with ``picture``
    ``report_n.png``; returns the table."""
    atomic_write_text(out / "dataset_size.json", as_json(table))
    columns = ["variant", "N", "memorized", "two-model agreement", "empirical's two-model agreement",
               "r2 vs empirical", "runs"]
    lines = [
        "",
        "Training-set size: memorized fraction and r^2 to the empirical denoiser (mean over the runs at",
        "each N), two-model agreement of the halves (each half-model sees N/2 images) and the copying",
        "empirical denoiser's at the same N.",
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
        for measure in ("memorized", "two-model agreement", "empirical's two-model agreement", "r2 vs empirical"):
            value = row[measure]
            if value is not None:
                point = value.value if isinstance(value, Interval) else value
                series.setdefault(row["variant"], {}).setdefault(measure, []).append((row["N"], point))
    if picture:
        dataset_size_figure(out / "report_n.png", series, "memorization to generalization: the same networks at several N")
    return text


def write_floor_figure(out: Path, table: list[dict[str, Any]], floor: Floor) -> Path:
    """``report_floor.png``: every run's same-noise agreement and r^2 with the reference on the
    floor's data half, against the seed-to-seed band."""
    shown = [row for row in table if row["split"] == floor.split and isinstance(row["r2_vs_reference"], Interval)
             and row["run"] is not None]  # the runs, not the floor's own row
    labels = [row["variant"] if row["seed"] is None else f"{row['variant']} (seed {row['seed']})" for row in shown]
    values = {
        "r2": [row["r2_vs_reference"].value for row in shown],
        "agreement": [row["vs_reference"].value for row in shown],
    }
    title = f"same noise, {floor.reference} as the reference ({floor.split}); band: {len(floor.runs)} seeds of it"
    return floor_figure(out / "report_floor.png", labels, values, floor.as_json(), title)


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
    if checkpoint_path(Path(run.location)).is_file():
        calls = TrainedRun.load(run.location).to(device).calls([int(s) for s in seeds], device)
        trajectory = torch.stack([call.x0.double() for call in calls])
    return Generated(samples.double(), seeds, trajectory)


def write_explanations(out: Path, runs: list[Run], explained: dict[int, dict[str, Any]]) -> str:
    """``explanations.json`` and the per-level Markdown table (appended to report.md); returns the table."""
    names = labels_of(runs)
    by_name = {names[id(run)]: explained[id(run)] for run in runs if id(run) in explained}
    atomic_write_text(out / "explanations.json", as_json(by_name))
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


def warn_unconverged(table: list[dict[str, Any]]) -> None:
    """One line on stderr for each trained run still improving or overfitting."""
    for row in table:
        where = f"{row['variant']} ({row['split']})"
        if row["converged"] == "no":
            print(f"not converged: {where}, a level's validation loss still fell "
                  f"{row['val_fall_last_quarter']:.1%} over the last quarter: train it longer", file=sys.stderr)
        if row["overfitting"] == "yes":
            print(f"overfitting: {where}, a level's validation loss rose {row['val_rise_last_quarter']:.1%} "
                  "over the last quarter: more steps make it worse", file=sys.stderr)


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
    controls = [str(name) for name in cfg.get("controls") or []]
    floor = seed_floor(runs, cfg.get("reference"), controls)
    agreement = agreements(runs)  # read by the table and the dataset-size table: loaded once
    columns, table = rows(runs, cfg.get("reference"), explained, float(cfg.convergence_tolerance), floor, agreement,
                          controls)
    judged = verdicts(table[: len(runs)], cfg.get("reference"))  # one row per run; the floor's row follows
    warn_unconverged(table)
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
    atomic_write_text(out / "verdicts.json", as_json(judged))
    if floor is not None:
        atomic_write_text(out / "seed_floor.json", as_json(floor.as_json()))
        if cfg.figure:
            print(f"figure: {write_floor_figure(out, table, floor)}")
    picture = figure(out / "report.png", shown, int(cfg.columns), labels_of(runs)) if cfg.figure else None
    print(markdown)
    print("verdicts: " + ", ".join(f"{name} {count}" for name, count in judged["counts"].items()))
    print(f"table:  {out / 'report.md'}\n        {out / 'report.csv'}\n        {out / 'verdicts.json'}")
    if picture is not None:
        print(f"figure: {picture}")
    elif cfg.figure:
        print("figure: none (no run has image samples on this machine)")
    return {"markdown": out / "report.md", "csv": out / "report.csv", "figure": picture, "rows": table,
            "verdicts": judged}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: report(cfg))


if __name__ == "__main__":
    check_command_line("report")
    main()
