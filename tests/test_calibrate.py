"""Issue #14, part: ``python -m lightning_diff.calibrate`` recovers a local score machine's patch sizes."""

import json

import pytest
from hydra import compose, initialize_config_dir
from test_measure_callback import history_rows

from conftest import train_config
from lightning_diff.calibrate import calibrate
from lightning_diff.errors import UserError
from lightning_diff.run.cli import CONF_DIR
from lightning_diff.train import train

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
