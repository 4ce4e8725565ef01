"""The finished runs of a study, read back for comparison: one :class:`Run` per training run.

Runs come from a sweep directory (a Hydra multirun directory, a SLURM array's group directory,
or any folder: every ``run.json`` below it is one run, see :mod:`lightning_diff.run.rundir`) or
from a W&B group through ``wandb.Api`` (network needed; the samples are used where the run
directory is on this machine). A run is named by its ``variant`` (the presets in
``conf/experiment/paper/unet/`` set it) or else by the Hydra overrides that set it apart from
the other runs; ``data.split`` is kept apart, so the two halves of a variant pair up.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lightning_diff.errors import UserError
from lightning_diff.run.atomic import atomic_write, atomic_write_text
from lightning_diff.run.rundir import read_sample_file
from lightning_diff.run.wandb_log import wandb_api

LEVEL_KEY = re.compile(r"^val/loss_level_(\d+)$")
MEASURE_PREFIX = "measure/"
HALVES = ("half_a", "half_b")
# Issue 15's criterion: a trained run has converged when no level's validation loss still fell by
# 2% or more over the last quarter of its training (one-sided, as an early-stopping min_delta: a
# level that rose by 2% has passed its held-out optimum and is reported as overfitting instead;
# docs/results.md shows why the two-sided version cannot be met at this size).
CONVERGENCE_TOLERANCE = 0.02
# What a run's steps set: longer_overrides scales all three together.
STEP_KEYS = ("trainer.max_steps", "trainer.val_check_interval", "callbacks.checkpoint_every_n_steps")
NOT_IMAGES = ("batch_size", "num_workers", "root", "num_val")


@dataclass
class Run:
    """What the report shows of one run."""

    name: str
    split: str
    config: dict[str, Any]
    location: str  # the run directory, or the W&B run path
    num_parameters: int | None = None
    val_loss: float | None = None  # the mean of the per-level losses (val/loss)
    val_losses: list[float] = field(default_factory=list)  # per level, lowest noise level first
    measure: dict[str, float] = field(default_factory=dict)  # the final measurement (memorized_fraction, ...)
    wall_time_s: float | None = None
    samples: Path | None = None  # samples.npz, when it is on this machine
    overrides: list[str] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)  # {step, val_loss_per_level} per validation

    def pair_key(self) -> str:
        """Runs that differ only in their half of the data share this key."""
        data = {key: value for key, value in self.images().items() if key != "split"}
        return json.dumps([self.name, self.config.get("seed"), data], sort_keys=True, default=str)

    def images(self) -> dict[str, Any]:
        """The data settings that choose the training images (dataset, size, N, seed, half); not how
        they are batched or where the files are."""
        data = self.config.get("data") or {}
        return {key: value for key, value in data.items() if key not in NOT_IMAGES}

    def same_images(self, other: "Run") -> bool:
        """Whether ``other`` was trained (or fitted) on the same training images."""
        return json.dumps(self.images(), sort_keys=True, default=str) == json.dumps(other.images(), sort_keys=True, default=str)


def _natural(path: Path) -> list[Any]:
    """Sort key putting run 2 before run 10 (Hydra numbers multirun jobs 0, 1, ...)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _levels(metrics: dict[str, Any]) -> list[float]:
    found = {int(m.group(1)): float(value) for key, value in metrics.items() if (m := LEVEL_KEY.match(key))}
    return [found[k] for k in sorted(found)]


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _name(runs: list[Run], fallback: dict[int, str]) -> None:
    """Name runs without a ``variant`` by the overrides no other run shares (data.split aside)."""
    common = set.intersection(*(set(run.overrides) for run in runs)) if runs else set()
    for i, run in enumerate(runs):
        if run.name:
            continue
        own = [item for item in run.overrides if item not in common and not item.startswith("data.split=")]
        run.name = " ".join(own) or fallback[i]


def read_run_dir(run_dir: Path) -> Run:
    """The run whose ``run.json`` is in ``run_dir``."""
    path = run_dir / "run.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            f"{path} is not a readable run summary ({err}); rerun that run or remove its directory"
        ) from err
    config = summary.get("config") or {}
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    # Looked up beside run.json rather than at the recorded path, so a sweep directory copied off a cluster works.
    samples = run_dir / Path(summary["samples"]).name if summary.get("samples") else None
    if samples is not None and samples.is_file():
        read_sample_file(samples)  # a broken file is named now, before any table or figure is written
    metrics = summary.get("metrics") or {}
    return Run(
        name=config.get("variant") or "",
        split=(config.get("data") or {}).get("split") or "full",
        config=config,
        location=str(run_dir),
        num_parameters=summary.get("num_parameters"),
        val_loss=_optional_float(metrics.get("val/loss")),
        val_losses=_levels(metrics),
        measure={key: float(value) for key, value in (summary.get("measure") or {}).items()},
        wall_time_s=_optional_float(summary.get("wall_time_s")),
        samples=samples if samples is not None and samples.is_file() else None,
        overrides=[str(item) for item in overrides or []],
        val_history=list(summary.get("val_history") or []),
    )


def runs_in_directory(root: Path) -> list[Run]:
    """Every finished run below ``root`` (each directory holding a ``run.json``), in sweep order."""
    expected = (
        "a sweep directory holds one run directory per variant, each with the run.json that "
        "python -m lightning_diff.train writes when a run finishes (e.g. runs/multirun/<date>/<time> after "
        "`python -m lightning_diff.train -m --config-dir sweeps --config-name paper_unet`)"
    )
    if not root.is_dir():
        raise UserError(f"sweep={root}: no such directory; {expected}")
    found = sorted((path.parent for path in root.rglob("run.json")), key=lambda p: _natural(p.relative_to(root)))
    if not found:
        raise UserError(f"sweep={root} holds no run.json (no finished run); {expected}")
    runs = [read_run_dir(run_dir) for run_dir in found]
    where = {i: run_dir.name if run_dir == root else str(run_dir.relative_to(root)) for i, run_dir in enumerate(found)}
    _name(runs, where)
    return runs


def runs_in_wandb_group(project: str, group: str, api: Any = None) -> list[Run]:
    """Every run of the W&B ``group`` in ``project`` (``entity/project`` or ``project``)."""
    if api is None:
        api = wandb_api(group, "report from the run directories with sweep=<the sweep directory>")
    try:
        found = list(api.runs(project, filters={"group": group}))
    except Exception as err:
        raise UserError(f"cannot list the runs of W&B project {project!r} ({err}); check wandb_project") from err
    if not found:
        raise UserError(
            f"W&B project {project!r} has no run in group {group!r}; the group is the runs' logger.group "
            "(slurm/sweep_array.sbatch: <sweep name>-<array job id>)"
        )
    runs = []
    for item in reversed(found):  # the API lists the newest first; sweep order is oldest first
        config = dict(item.config)
        summary = dict(item.summary.items())
        run_dir = Path(str((config.get("paths") or {}).get("run_dir", "")))
        samples = run_dir / "samples.npz" if str(run_dir) else None
        runs.append(
            Run(
                name=config.get("variant") or "",
                split=(config.get("data") or {}).get("split") or "full",
                config=config,
                location="/".join(str(part) for part in item.path),
                num_parameters=summary.get("num_parameters"),
                val_loss=_optional_float(summary.get("val/loss")),
                val_losses=_levels(summary),
                measure={
                    key[len(MEASURE_PREFIX) :]: float(value)
                    for key, value in summary.items()
                    if key.startswith(MEASURE_PREFIX) and isinstance(value, (int, float))
                },
                wall_time_s=_optional_float(summary.get("wall_time_s")),
                samples=samples if samples is not None and samples.is_file() else None,
            )
        )
    _name(runs, {i: str(item.name) for i, item in enumerate(reversed(found))})
    return runs


def halves(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of the same variant on the two disjoint halves (``data.split=half_a``, ``half_b``)."""
    by_key: dict[str, dict[str, Run]] = {}
    for run in runs:
        if run.split in HALVES:
            by_key.setdefault(run.pair_key(), {})[run.split] = run
    return [(pair["half_a"], pair["half_b"]) for pair in by_key.values() if len(pair) == 2]


def keep_summary(run_dir: Path, dest: Path) -> Path:
    """Copy what the report reads of a finished run (its ``run.json``, ``samples.npz`` and Hydra
    overrides; not the checkpoints) to ``dest/<run directory name>``, so a grid run over several
    sittings or machines keeps one reportable folder: ``report sweep=dest``."""
    summary = run_dir / "run.json"
    if not summary.is_file():
        raise UserError(f"{run_dir} holds no run.json: the run has not finished, so there is nothing to keep yet")
    target = dest / run_dir.name
    for name in ("samples.npz", ".hydra/overrides.yaml"):
        source = run_dir / name
        if source.is_file():
            atomic_write(target / name, lambda handle, source=source: handle.write(source.read_bytes()))
    atomic_write_text(target / "run.json", summary.read_text())  # last: its presence means the copy is whole
    return target


def last_quarter_changes(history: list[dict[str, Any]]) -> list[float] | None:
    """Each level's relative change (L_end - L_q) / L_end of its validation loss over the last
    quarter of training, L_q the last validation at or before 3/4 of the final step: negative while
    the loss still falls, positive when it rises. None without a validation there (validate at
    least every quarter of the steps)."""
    if len(history) < 2:
        return None
    end = history[-1]
    earlier = [entry for entry in history[:-1] if entry["step"] <= 0.75 * end["step"]]
    if not earlier:
        return None
    quarter = earlier[-1]["val_loss_per_level"]
    return [(last - then) / max(abs(last), 1e-12) for last, then in zip(end["val_loss_per_level"], quarter)]


def load_samples(path: Path) -> tuple[torch.Tensor, np.ndarray]:
    """The samples and their per-sample seeds from a run's samples.npz, checked (:func:`read_sample_file`)."""
    stored = read_sample_file(path)
    return torch.from_numpy(np.asarray(stored.samples, dtype=np.float32)), stored.seeds


@dataclass(frozen=True)
class Convergence:
    """A trained run's last quarter (:func:`last_quarter_changes`): ``fall`` and ``rise`` are the
    largest relative decrease and increase of a level's validation loss (0 when none).
    ``converged`` is "yes" when no level still fell by the tolerance or more, so more steps would
    not improve it; ``overfitting`` is "yes" when a level rose by that much, so more steps make
    that level worse (the network is fitting its training images, not the distribution)."""

    fall: float | None
    rise: float | None
    converged: str | None
    overfitting: str | None


def convergence(run: Run, tolerance: float) -> Convergence:
    """The run's :class:`Convergence`; all None for a fitted run."""
    if (run.config.get("denoiser") or {}).get("fit") != "sgd":
        return Convergence(None, None, None, None)
    changes = last_quarter_changes(run.val_history)
    if changes is None:
        unknown = "unknown (validate at least every quarter of the steps)"
        return Convergence(None, None, unknown, unknown)
    fall, rise = max(0.0, -min(changes)), max(0.0, max(changes))
    return Convergence(fall, rise, "yes" if fall < tolerance else "no", "yes" if rise >= tolerance else "no")


def unconverged(root: Path, tolerance: float = CONVERGENCE_TOLERANCE) -> list[Path]:
    """The run directories below ``root`` of trained runs still improving by the criterion: the
    ones more steps would help (an overfitting run is not among them)."""
    return [Path(run.location) for run in runs_in_directory(root) if convergence(run, tolerance).converged == "no"]


def longer_overrides(run_dir: Path, factor: int) -> list[str]:
    """The Hydra overrides that retrain the run in ``run_dir`` with ``factor`` times its steps (and
    its validation and checkpoint intervals), so the last quarter is read at the same fraction."""
    if factor < 2:
        raise UserError(f"factor={factor} must be at least 2 (the point is to train longer)")
    run = read_run_dir(run_dir)
    if not (run_dir / ".hydra" / "overrides.yaml").is_file():
        raise UserError(f"{run_dir} has no .hydra/overrides.yaml: the command that trained it is unknown")
    scaled = []
    for key in STEP_KEYS:
        section, name = key.split(".")
        value = (run.config.get(section) or {}).get(name)
        if not isinstance(value, int):
            raise UserError(f"{run_dir}: {key}={value!r} is not a step count, so it cannot be scaled")
        scaled.append(f"{key}={value * factor}")
    own = [item for item in run.overrides if not item.startswith(tuple(f"{key}=" for key in STEP_KEYS))]
    return own + scaled
