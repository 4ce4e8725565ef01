"""Issue #23, item 4: a closed-form machine validates on a subset of the validation images by
default (its exact posterior costs per image what a sampling step costs), and slow phases show
progress within a batch."""

import json
import re
import time

import pytest
import torch

from conftest import train_config
from lightning_diff.compose import build
from lightning_diff.denoisers import local_score
from lightning_diff.diffusion.config import Diffusion
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.samplers import make_sampler
from lightning_diff.training import train

MACHINE = ["data=digits", "data.num_train=60", "data.num_val=40", "denoiser=local_score", "denoiser.patch_sizes=3",
           "diffusion.num_levels=3", "num_samples=4", "callbacks.measure.num_samples=4"]


def test_a_closed_form_machine_validates_on_the_first_closed_form_val_images(tmp_path):
    summary = train(train_config(tmp_path / "run", *MACHINE, "closed_form_val_images=8"))
    config = summary["config"]
    datamodule = build(config["data"], "data")
    datamodule.setup("fit")
    diffusion: Diffusion = build(config["diffusion"], "diffusion")
    grid = diffusion.noise_grid()
    machine = local_score.build(datamodule.data_shape, grid, patch_sizes=3)
    machine.fit_data(datamodule.train_data)
    objective = diffusion.objective(grid, machine.conditioning)
    expected = objective.per_level_loss(machine, datamodule.val_data[:8], int(config["seed"]))
    found = [summary["metrics"][f"val/loss_level_{k}"] for k in range(3)]
    assert found == pytest.approx(expected.tolist(), rel=1e-6)  # logged in float32
    every = objective.per_level_loss(machine, datamodule.val_data, int(config["seed"]))
    assert not torch.allclose(every, expected)  # the subset is what was measured, not all 40
    everything = train(train_config(tmp_path / "all", *MACHINE, "closed_form_val_images=null"))
    assert [everything["metrics"][f"val/loss_level_{k}"] for k in range(3)] == pytest.approx(every.tolist(), rel=1e-6)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["closed_form_val_images"] == 8


def test_sampling_a_slow_denoiser_reports_progress_per_call(capsys):
    grid = NoiseGrid(torch.tensor([0.1, 0.4, 0.7, 0.9], dtype=torch.float64))

    def slow(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time.sleep(1.1)  # four calls: past the three seconds after which progress is shown
        return 0.5 * y

    make_sampler("ddim").sample(slow, grid, (2,), [0, 1], batch_size=2, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sampling (ddim, 4 levels)")]
    assert lines and re.match(r"sampling \(ddim, 4 levels\): call [34]/4 \(\d+%\)", lines[0]), lines
    assert lines[-1].startswith("sampling (ddim, 4 levels): call 4/4 (100%)")
