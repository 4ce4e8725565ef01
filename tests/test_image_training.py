"""Issue #3: every image family trains through the entry point; image bad inputs are named."""

import json

import numpy as np
import pytest

from conftest import run_module, train_config
from lightning_diff.errors import UserError
from lightning_diff.training import train

TINY_DIGITS = ["data=digits", "data.image_size=16", "data.num_train=64", "data.num_val=16", "data.batch_size=8"]
FAMILIES = {
    "unet-per_level": ["denoiser=unet", "denoiser.base_channels=4", "denoiser.conditioning=per_level"],
    "unet-conditioned": ["denoiser=unet", "denoiser.base_channels=4", "denoiser.conditioning=conditioned"],
    "unet-blind": ["denoiser=unet", "denoiser.base_channels=4", "denoiser.conditioning=blind"],
    "dit": ["denoiser=dit", "denoiser.width=32", "denoiser.depth=2", "denoiser.heads=2", "denoiser.patch_size=4"],
    "bottleneck_image": ["denoiser=bottleneck_image", "denoiser.width=32", "denoiser.bottleneck=8"],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_image_family_trains_30_steps_through_the_entry_point(tmp_path, family):
    result = run_module(
        "lightning_diff.train",
        "trainer=cpu",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
        "trainer.max_steps=30",
        "trainer.enable_progress_bar=false",
        "diffusion.num_levels=4",
        "num_samples=4",
        *TINY_DIGITS,
        *FAMILIES[family],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["global_step"] == 30
    samples = np.load(tmp_path / "samples.npz")["samples"]
    assert samples.shape == (4, 1, 16, 16) and np.abs(samples).max() <= 1.0
    assert np.isfinite(list(summary["metrics"].values())).all()


def test_num_parameters_counts_every_per_level_network(tmp_path):
    common = [*TINY_DIGITS, "denoiser=unet", "denoiser.base_channels=4", "trainer.max_steps=1", "num_samples=0"]
    per_level = train(train_config(tmp_path / "a", *common, "diffusion.num_levels=5"))
    blind = train(train_config(tmp_path / "b", *common, "diffusion.num_levels=5", "denoiser.conditioning=blind"))
    assert per_level["num_parameters"] == 5 * blind["num_parameters"]


def test_image_size_the_unet_cannot_halve(tmp_path):
    with pytest.raises(UserError, match=r"num_blocks"):
        train(train_config(tmp_path, "data=digits", "data.image_size=28", "denoiser=unet", "denoiser.num_blocks=3"))


def test_grey_dataset_given_an_rgb_model(tmp_path):
    with pytest.raises(UserError, match=r"in_channels=3.*1"):
        train(train_config(tmp_path, *TINY_DIGITS, "denoiser=unet", "denoiser.in_channels=3"))


def test_more_training_images_than_the_dataset_has(tmp_path):
    with pytest.raises(UserError, match=r"num_train=5000.*1797|1797.*5000"):
        train(train_config(tmp_path, "data=digits", "data.num_train=5000", "denoiser=empirical"))
