"""``python -m lightning_diff.calibrate ref=RUN_DIR [machine=local_score|pca_locality]``: the analytic
machine's knob that best predicts a trained network (Kamb & Ganguli's calibration).

The reference's sampler is run from ``num_samples`` calibration seeds (their own stream,
:func:`lightning_diff.seeding.calibration_seeds`, disjoint from every evaluation seed: a knob is
never scored on the trajectories that chose it) and every denoiser call recorded
(:meth:`lightning_diff.trained.TrainedRun.calls`); at each grid level the machine with each
candidate knob denoises the same states, and the median r^2 against the reference's outputs
there ranks the candidates. ``local_score`` chooses one patch size per level; ``pca_locality`` one
threshold for all levels (its knob is global: the highest mean over levels). Written to ``out``
(default ``<ref>/calibration``): ``calibration.json`` (levels, candidates, the r^2 table, the
choice, the seeds and their recipe, the overrides), ``calibration.png`` (r^2 against the knob per
level) and ``overrides.txt`` (the command-line overrides that train the calibrated machine on the
reference's grid, given the reference's data; they record the calibration seeds' recipe as
``calibrated_on``, so the report can tell held-out scores from in-sample ones).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from lightning_diff.denoisers import local_score, pca_locality
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError
from lightning_diff.figures.plots import calibration_figure
from lightning_diff.metrics.r2 import median_r2
from lightning_diff.progress import with_progress
from lightning_diff.run.atomic import atomic_write_text
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import checkpoint_path, read_sample_file
from lightning_diff.run.wandb_log import log_to_wandb
from lightning_diff.seeding import calibration_seeds
from lightning_diff.trained import TrainedRun

# pca_locality's thresholds tried when candidates=null: 0 (real-valued weights) up to a tenth of the largest gain.
THRESHOLDS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


@dataclass(frozen=True)
class Knob:
    """What calibration searches for one machine: the candidates, how each builds the machine, and
    whether the choice is made per level (patch sizes) or once for every level (a threshold)."""

    name: str  # the denoiser's config key
    label: str  # one value of it, in W&B keys and the figure
    candidates: list[Any]
    per_level: bool
    fixed: dict[str, Any]

    def machine(self, shape: tuple[int, int, int], grid: NoiseGrid, value: Any) -> torch.nn.Module:
        if self.name == "patch_sizes":
            return local_score.build(shape, grid, patch_sizes=value, **self.fixed)
        return pca_locality.build(shape, grid, threshold=value, **self.fixed)

    def choose(self, table: list[list[float]]) -> list[Any]:
        """The chosen value per level (highest noise first)."""
        if self.per_level:
            return [self.candidates[int(np.argmax(row))] for row in table]
        best = self.candidates[int(np.argmax(np.mean(table, axis=0)))]
        return [best] * len(table)

    def overrides(self, chosen: list[Any]) -> list[str]:
        fixed = [f"denoiser.{key}={str(value).lower() if isinstance(value, bool) else value}"
                 for key, value in self.fixed.items()]
        value = f"[{','.join(map(str, chosen))}]" if self.per_level else str(chosen[0])
        return [*fixed, f"denoiser.{self.name}={value}"]


def knob(cfg: DictConfig, shape: tuple[int, int, int]) -> Knob:
    """The machine's knob and its checked candidates (the configured ones, or every sensible value)."""
    if cfg.machine == "pca_locality":
        values = list(THRESHOLDS) if cfg.candidates is None else list(cfg.candidates)
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1]
        if bad or not values:
            raise UserError(f"candidates={values}: give pca_locality thresholds in [0, 1), e.g. candidates=[0,0.002,0.02]")
        return Knob("threshold", "threshold", [float(v) for v in values], False, {"temperature": float(cfg.temperature)})
    if cfg.machine != "local_score":
        raise UserError(f"machine={cfg.machine!r} cannot be calibrated; use local_score or pca_locality")
    fixed = {"equivariant": bool(cfg.equivariant), "padding": str(cfg.padding)}
    largest = local_score.largest_patch(shape, fixed["equivariant"], fixed["padding"])
    sizes = list(range(1, largest + 1, 2)) if cfg.candidates is None else list(cfg.candidates)
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1 or s % 2 == 0 or s > largest]
    if bad or not sizes:
        raise UserError(
            f"candidates={sizes}: give odd patch sizes from 1 to {largest} (the largest this machine allows on "
            f"{shape[1]}x{shape[2]} images), e.g. candidates=[3,5,7]"
        )
    return Knob("patch_sizes", "patch_size", sizes, True, fixed)


def held_out(seeds: list[int], ref: Path) -> None:
    """Refuse calibration seeds that the reference's own samples (its evaluation seeds) use."""
    samples = ref / "samples.npz"
    if not samples.is_file():
        return
    shared = set(seeds) & {int(seed) for seed in read_sample_file(samples).seeds}
    if shared:
        raise UserError(
            f"{len(shared)} calibration seeds are among the evaluation seeds of {samples}; the knob would be scored on "
            "the trajectories that chose it: calibrate with another seed="
        )


@torch.no_grad()
def r2_table(cfg: DictConfig, reference: TrainedRun, choice: Knob, seeds: list[int]) -> list[list[float]]:
    """Median single-step r^2 per grid level (highest noise first) and candidate."""
    calls = reference.calls(seeds, str(cfg.device))
    train = reference.datamodule().train_data.to(cfg.device)
    table = [[0.0] * len(choice.candidates) for _ in calls]
    for column, value in enumerate(with_progress(choice.candidates, desc=f"calibrate ({choice.name})", unit="candidate")):
        machine = choice.machine(reference.data_shape, reference.grid, value).to(cfg.device)
        machine.fit_data(train)
        for row, call in enumerate(calls):
            levels = torch.full((call.y.shape[0],), call.t, device=cfg.device)
            table[row][column] = median_r2(call.x0, machine(call.y.to(cfg.device), levels).cpu())
    return table


def calibrate(cfg: DictConfig) -> dict[str, Any]:
    """Calibrate, write the table, figure and overrides; returns the JSON payload."""
    ref = Path(str(cfg.ref)).expanduser()
    if not checkpoint_path(ref).is_file():
        raise UserError(f"ref={cfg.ref}: no run directory with checkpoints/last.ckpt; point it at a finished run")
    reference = TrainedRun.load(ref, str(cfg.weights)).to(cfg.device)
    if len(reference.data_shape) != 3:
        raise UserError(f"ref={cfg.ref} was trained on data of shape {reference.data_shape}; local machines need images")
    choice = knob(cfg, reference.data_shape)
    seeds = calibration_seeds(int(cfg.seed), int(cfg.num_samples))
    held_out(seeds, ref)
    table = r2_table(cfg, reference, choice, seeds)
    chosen = choice.choose(table)
    levels = reference.grid.levels.tolist()[::-1]
    recipe = {"seed": int(cfg.seed), "num_samples": int(cfg.num_samples)}
    overrides = [
        f"denoiser={cfg.machine}",
        *choice.overrides(chosen),
        f"calibrated_on={{seed:{recipe['seed']},num_samples:{recipe['num_samples']}}}",
        # The reference's own levels, exactly: the machine then samples (and compares per level) on its grid.
        f"diffusion.grid_values=[{','.join(map(repr, reference.grid.levels.tolist()))}]",
    ]
    result = {
        "ref": str(ref), "machine": str(cfg.machine), "knob": choice.name, "levels": levels,
        "candidates": choice.candidates, "r2": table, choice.name: chosen if choice.per_level else chosen[0],
        "calibrated_on": recipe, "seeds": seeds, "overrides": overrides,
    }
    out = Path(str(cfg.out)).expanduser() if cfg.out else ref / "calibration"
    figure = calibration_figure(out / "calibration.png", levels, choice.candidates, table, choice.label)
    atomic_write_text(out / "calibration.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "overrides.txt", " ".join(overrides) + "\n")
    if cfg.wandb:
        best = {f"calibrate/r2_best_level_{k}": max(row) for k, row in enumerate(table)}
        per_level = {f"calibrate/{choice.label}_level_{k}": float(value) for k, value in enumerate(chosen)}
        log_to_wandb(str(cfg.wandb_project), out, {**best, **per_level}, {f"calibrate/r2_per_{choice.label}": figure},
                     job_type="calibrate", name=f"calibrate {cfg.machine} {ref.name}")
    print(json.dumps({choice.name: result[choice.name], "overrides": " ".join(overrides), "out": str(out)}, indent=2))
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="calibrate")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: calibrate(cfg))


if __name__ == "__main__":
    check_command_line("calibrate")
    main()
