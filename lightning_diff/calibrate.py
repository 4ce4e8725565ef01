"""``python -m lightning_diff.calibrate ref=RUN_DIR``: the local score machine that best predicts a
trained network, one patch size per level (Kamb & Ganguli's calibration).

The reference's sampler is run from ``num_samples`` seeds and every denoiser call recorded
(:func:`lightning_diff.compare.denoiser_calls`); at each grid level the machine with each
candidate patch size denoises the same states, and the size with the highest median r^2
against the reference's outputs there wins. Written to ``out`` (default ``<ref>/calibration``):
``calibration.json`` (levels, candidates, the r^2 table, the chosen sizes, the overrides),
``calibration.png`` (r^2 against patch size per level) and ``overrides.txt`` (the command-line
overrides that train the calibrated machine on the reference's data).
"""

import json
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from lightning_diff.compare import denoiser_calls, first_calls, median_r2
from lightning_diff.compose import build
from lightning_diff.denoisers import local_score
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError
from lightning_diff.figures.plots import calibration_figure
from lightning_diff.run.atomic import atomic_write_text
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import checkpoint_path
from lightning_diff.run.wandb_log import log_to_wandb
from lightning_diff.sample import load_denoiser
from lightning_diff.seeding import sample_seeds


def candidate_sizes(cfg: DictConfig, shape: tuple[int, int, int]) -> list[int]:
    """The configured candidates, checked, or every odd size the machine allows."""
    largest = local_score.largest_patch(shape, bool(cfg.equivariant), str(cfg.padding))
    sizes = list(range(1, largest + 1, 2)) if cfg.candidates is None else list(cfg.candidates)
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1 or s % 2 == 0 or s > largest]
    if bad or not sizes:
        raise UserError(
            f"candidates={sizes}: give odd patch sizes from 1 to {largest} (the largest this machine allows on "
            f"{shape[1]}x{shape[2]} images), e.g. candidates=[3,5,7]"
        )
    return sizes


@torch.no_grad()
def r2_table(cfg: DictConfig, reference: Any, info: dict[str, Any], sizes: list[int]) -> list[list[float]]:
    """Median single-step r^2 per grid level (highest noise first) and candidate size."""
    shape = tuple(info["data_shape"])
    grid = NoiseGrid(torch.tensor(info["grid"], dtype=torch.float64))
    seeds = sample_seeds(int(cfg.seed), int(cfg.num_samples))
    calls = first_calls(denoiser_calls(reference, info, str(info["config"]["sampler"]["name"]), seeds, str(cfg.device)))
    datamodule = build(info["config"]["data"], "data")
    datamodule.setup("fit")
    table = [[0.0] * len(sizes) for _ in calls]
    for column, size in enumerate(sizes):
        machine = local_score.build(
            shape, grid, equivariant=bool(cfg.equivariant), padding=str(cfg.padding), patch_sizes=size
        ).to(cfg.device)
        machine.fit_data(datamodule.train_data.to(cfg.device))
        for row, (t, y, out) in enumerate(calls):
            levels = torch.full((y.shape[0],), t, device=cfg.device)
            table[row][column] = median_r2(out, machine(y.to(cfg.device), levels).cpu())
    return table


def calibrate(cfg: DictConfig) -> dict[str, Any]:
    """Calibrate, write the table, figure and overrides; returns the JSON payload."""
    ref = Path(str(cfg.ref)).expanduser()
    if not checkpoint_path(ref).is_file():
        raise UserError(f"ref={cfg.ref}: no run directory with checkpoints/last.ckpt; point it at a finished run")
    reference, info = load_denoiser(checkpoint_path(ref), str(cfg.weights))
    if len(info["data_shape"]) != 3:
        raise UserError(f"ref={cfg.ref} was trained on data of shape {info['data_shape']}; local score machines need images")
    sizes = candidate_sizes(cfg, tuple(info["data_shape"]))
    table = r2_table(cfg, reference.to(cfg.device), info, sizes)
    chosen = [sizes[max(range(len(sizes)), key=row.__getitem__)] for row in table]
    levels = sorted(info["grid"], reverse=True)
    overrides = [
        "denoiser=local_score",
        f"denoiser.equivariant={str(bool(cfg.equivariant)).lower()}",
        f"denoiser.padding={cfg.padding}",
        f"denoiser.patch_sizes=[{','.join(map(str, chosen))}]",
    ]
    result = {"ref": str(ref), "levels": levels, "candidates": sizes, "r2": table, "patch_sizes": chosen, "overrides": overrides}
    out = Path(str(cfg.out)).expanduser() if cfg.out else ref / "calibration"
    figure = calibration_figure(out / "calibration.png", levels, sizes, table)
    atomic_write_text(out / "calibration.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "overrides.txt", " ".join(overrides) + "\n")
    if cfg.wandb:
        best = {f"calibrate/r2_best_level_{k}": max(row) for k, row in enumerate(table)}
        sizes_chosen = {f"calibrate/patch_size_level_{k}": float(size) for k, size in enumerate(chosen)}
        log_to_wandb(str(cfg.wandb_project), out, {**best, **sizes_chosen}, {"calibrate/r2_per_patch_size": figure},
                     job_type="calibrate", name=f"calibrate {ref.name}")
    print(json.dumps({"patch_sizes": chosen, "overrides": " ".join(overrides), "out": str(out)}, indent=2))
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="calibrate")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: calibrate(cfg))


if __name__ == "__main__":
    check_command_line("calibrate")
    main()
