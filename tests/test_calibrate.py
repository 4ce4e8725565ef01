"""Issue #14, part: ``python -m lightning_diff.calibrate`` recovers a local score machine's patch sizes;
issue #22: its trajectories are held out from every evaluation seed, and pca_locality's threshold is calibrated too."""

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from test_measure_callback import history_rows

from conftest import train_config
from lightning_diff.calibrate import calibrate
from lightning_diff.errors import UserError
from lightning_diff.run.cli import CONF_DIR
from lightning_diff.seeding import calibration_seeds, sample_seeds
from lightning_diff.trained import TrainedRun
from lightning_diff.training import train

# 8x8 digits; a grid whose levels tell patch sizes apart (at t near 1 every machine gives the mean).
REFERENCE = ["data=digits", "data.num_train=60", "data.num_val=20", "denoiser=local_score", "denoiser.padding=zeros",
             "diffusion.num_levels=3", "diffusion.t_max=0.3", "diffusion.t_min=0.02", "num_samples=4"]


def calibrate_config(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="calibrate", overrides=list(overrides))


@pytest.mark.parametrize("equivariant", [True, False])
def test_calibrate_recovers_the_patch_sizes_of_a_local_score_reference(tmp_path, equivariant):
    flag = str(equivariant).lower()
    train(train_config(tmp_path / "ref", *REFERENCE, f"denoiser.equivariant={flag}", "denoiser.patch_sizes=[7,5,3]"))
    result = calibrate(calibrate_config(
        f"ref={tmp_path / 'ref'}", f"equivariant={flag}", "padding=zeros", "candidates=[1,3,5,7,9]", "num_samples=6",
        "wandb=true",
    ))
    assert result["patch_sizes"] == [7, 5, 3]
    for row, size in zip(result["r2"], result["patch_sizes"]):
        assert row[result["candidates"].index(size)] == pytest.approx(1.0, abs=1e-5)
    out = tmp_path / "ref" / "calibration"
    assert json.loads((out / "calibration.json").read_text())["patch_sizes"] == [7, 5, 3]
    assert (out / "calibration.png").stat().st_size > 0
    assert "denoiser.patch_sizes=[7,5,3]" in (out / "overrides.txt").read_text()
    (logged,) = [row for row in history_rows(out) if "calibrate/patch_size_level_0" in row]
    assert [logged[f"calibrate/patch_size_level_{k}"] for k in range(3)] == [7, 5, 3]
    assert logged["calibrate/r2_per_patch_size/width"] > 0


def test_bad_candidates_and_a_missing_reference_are_named(tmp_path):
    with pytest.raises(UserError, match="no run directory with checkpoints/last.ckpt"):
        calibrate(calibrate_config(f"ref={tmp_path}"))
    train(train_config(tmp_path / "ref", *REFERENCE, "denoiser.patch_sizes=3"))
    with pytest.raises(UserError, match=r"candidates=\[4, 3\]: give odd patch sizes from 1 to 15"):
        calibrate(calibrate_config(f"ref={tmp_path / 'ref'}", "candidates=[4,3]", "padding=zeros"))


def seeds_of(run_dir) -> set[int]:
    with np.load(run_dir / "samples.npz") as stored:
        return {int(seed) for seed in stored["seeds"]}


def test_calibration_seeds_are_held_out_from_the_reference_and_the_machine_it_trains(tmp_path):
    train(train_config(tmp_path / "ref", *REFERENCE, "denoiser.patch_sizes=[7,5,3]", "num_samples=8"))
    result = calibrate(calibrate_config(
        f"ref={tmp_path / 'ref'}", "padding=zeros", "candidates=[3,5,7]", "num_samples=8",
    ))
    recorded = json.loads((tmp_path / "ref" / "calibration" / "calibration.json").read_text())
    assert recorded["seeds"] == calibration_seeds(0, 8) and recorded["calibrated_on"] == {"seed": 0, "num_samples": 8}
    overrides = (tmp_path / "ref" / "calibration" / "overrides.txt").read_text().split()
    assert "calibrated_on={seed:0,num_samples:8}" in overrides
    summary = train(train_config(tmp_path / "machine", *REFERENCE, *overrides, "num_samples=8"))
    assert summary["config"]["calibrated_on"] == {"seed": 0, "num_samples": 8}
    assert TrainedRun.load(tmp_path / "machine").grid.levels.tolist() == TrainedRun.load(tmp_path / "ref").grid.levels.tolist()
    chosen = set(result["seeds"])
    assert not chosen & seeds_of(tmp_path / "ref") and not chosen & seeds_of(tmp_path / "machine")
    # Not only these runs': no evaluation stream a study uses (sample_seed 0..99, 1,000 samples each) meets it.
    evaluation = {seed for sample_seed in range(100) for seed in sample_seeds(sample_seed, 1000)}
    assert not chosen & evaluation and not set(calibration_seeds(1, 256)) & evaluation


def test_calibration_refuses_seeds_the_reference_was_evaluated_on(tmp_path):
    train(train_config(tmp_path / "ref", *REFERENCE, "denoiser.patch_sizes=3", "num_samples=4"))
    stored = dict(np.load(tmp_path / "ref" / "samples.npz"))
    stored["seeds"] = np.array(calibration_seeds(0, 4))  # a reference evaluated on the calibration stream
    np.savez(tmp_path / "ref" / "samples.npz", **stored)
    with pytest.raises(UserError, match="among the evaluation seeds"):
        calibrate(calibrate_config(f"ref={tmp_path / 'ref'}", "padding=zeros", "candidates=[3]", "num_samples=4"))


def test_calibrate_recovers_the_threshold_of_a_pca_locality_reference(tmp_path):
    reference = [*REFERENCE[:4], "denoiser=pca_locality", *REFERENCE[5:]]
    train(train_config(tmp_path / "ref", *reference, "denoiser.threshold=0.05"))
    result = calibrate(calibrate_config(
        f"ref={tmp_path / 'ref'}", "machine=pca_locality", "candidates=[0,0.01,0.05,0.2]", "num_samples=4",
    ))
    assert result["threshold"] == 0.05 and result["knob"] == "threshold"
    best = result["candidates"].index(0.05)
    assert all(row[best] == pytest.approx(1.0, abs=1e-5) for row in result["r2"])
    assert "denoiser.threshold=0.05" in (tmp_path / "ref" / "calibration" / "overrides.txt").read_text()
    with pytest.raises(UserError, match="pca_locality thresholds in"):
        calibrate(calibrate_config(f"ref={tmp_path / 'ref'}", "machine=pca_locality", "candidates=[1.5]"))
