"""Issue #23's acceptance: a new user with a diffusers model folder runs the README's commands —
adopt, evaluate, calibrate (and trains the calibrated machine on the model's grid), compare
against that machine, report with machines=[...] — on a small model trained here for a few steps
with diffusers' own objective."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from conftest import require_system, run_module
from lightning_diff.data.images import DigitsDataModule
from lightning_diff.metrics.fid import KNOWN_WEIGHTS, package_file

STEPS = 10  # divides the scheduler's 1,000 timesteps (diffusers' DDIM steps by 1000 // K)
SAMPLES = 8


def trained_diffusers_model(folder: Path) -> Path:
    """A tiny UNet2DModel trained 30 steps on 8x8 digits with diffusers' epsilon objective, saved as
    a DDPMPipeline: what a user brings."""
    torch.manual_seed(0)
    images = DigitsDataModule(num_train=64, num_val=8).train_data
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    for _ in range(30):
        batch = images[torch.randint(len(images), (16,))]
        noise = torch.randn_like(batch)
        timesteps = torch.randint(0, 1000, (batch.shape[0],))
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(batch, noise, timesteps), timesteps).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(folder)
    return folder


def command(*args: str) -> str:
    """One command of the README, as a user runs it; its stdout."""
    done = run_module(*args)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_a_diffusers_model_is_adopted_measured_calibrated_compared_and_reported(tmp_path):
    require_system("fid_weights")
    inception = package_file(KNOWN_WEIGHTS["torchscript"].package_file)
    model = trained_diffusers_model(tmp_path / "my-ddpm")
    study = tmp_path / "runs"
    run = study / "my_ddpm"
    command("lightning_diff.adopt", f"path={model}", f"out={run}", f"num_inference_steps={STEPS}", "data=digits",
            f"num_samples={SAMPLES}", "progress=false")

    command("lightning_diff.evaluate", f"ckpt={run}", f"num_samples={SAMPLES}", f"metrics.features.weights={inception}",
            "metrics.reference.count=16", "metrics.prdc.nearest_k=2", "metrics.kid.subset_size=4",
            f"out={tmp_path / 'eval.json'}", "progress=false")
    measured = json.loads((tmp_path / "eval.json").read_text())
    assert 0 <= measured["memorized_fraction_low"] <= measured["memorized_fraction"] <= measured["memorized_fraction_high"]
    assert np.isfinite(measured[f"fid_train@{SAMPLES}"]) and np.isfinite(measured[f"kid_train@{SAMPLES}"])

    command("lightning_diff.calibrate", f"ref={run}", "equivariant=true", "padding=zeros", "candidates=[1,3,5]",
            "num_samples=4")
    calibration = json.loads((run / "calibration" / "calibration.json").read_text())
    assert len(calibration["patch_sizes"]) == STEPS and calibration["seeds"]
    overrides = (run / "calibration" / "overrides.txt").read_text().split()
    machine = tmp_path / "machines" / "els"
    command("lightning_diff.train", *overrides, "data=digits", f"num_samples={SAMPLES}", "logger=none", "trainer=cpu",
            "callbacks.measure.enabled=false", f"hydra.run.dir={machine}")

    command("lightning_diff.compare", f"a={run}", f"b={machine}", f"out={tmp_path / 'r2.json'}")
    compared = json.loads((tmp_path / "r2.json").read_text())
    assert len(compared["r2_single_step_per_level"]) == STEPS  # the machine was sampled on the model's own grid
    interval = compared["r2_samples_median_ci"]
    assert interval["low"] <= interval["value"] <= interval["high"]

    command("lightning_diff.report", f"sweep={study}", f"machines=[{machine}]", "reference=null", "figure=false")
    explained = json.loads((study / "explanations.json").read_text())
    (row,) = explained.values()  # the adopted network is the trained run; the machine explains it
    assert set(row["r2_median"]) == {"els"} and row["in_sample"] == []  # its scores are held out
    assert row["r2_interval"]["els"]["value"] == pytest.approx(row["r2_median"]["els"])
