"""Issue #7: the study presets (conf/experiment/paper/unet/) and the one sweep that runs them all.

Every file in that folder is found at collection time, so a new preset is tested without
editing this file: it must compose, share the study's settings, and train (or fit) through
``train(cfg)`` at a tiny size, writing run.json.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, train_config
from lightning_diff.compose import build
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError
from lightning_diff.run.cli import CONF_DIR
from lightning_diff.sweep import expand, trained_presets
from lightning_diff.training import train

PRESET_DIR = Path(CONF_DIR) / "experiment" / "paper" / "unet"
PRESETS = sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))
SWEEP = REPO / "sweeps" / "paper_unet.yaml"
UNET_TARGET = "lightning_diff.denoisers.unet.build"
# 16x16 like the study, but a handful of images, levels and samples, 10 steps.
TINY = [
    "data.image_size=16",
    "data.num_train=24",
    "data.num_val=8",
    "data.batch_size=8",
    "diffusion.num_levels=3",
    "trainer.max_steps=10",
    "trainer.val_check_interval=10",
    "callbacks.checkpoint_every_n_steps=10",
    "callbacks.measure.every_n_steps=0",
    "callbacks.measure.num_samples=4",
    "num_samples=4",
    "sampler.batch_size=4",
]
# Families shrunk to a fraction of their size: the presets' wiring is under test, not capacity.
SHRINK = {"width": 16, "depth": 1, "heads": 2, "num_features": 16, "noise_draws": 1}


def preset(name: str, *overrides: str, run_dir: Path = Path("unused")):
    return train_config(run_dir, f"experiment=paper/unet/{name}", *overrides)


def shrunk(cfg):
    """``cfg`` with every width in its denoiser cut down (UNet widths by 8, keeping their ratios)."""
    denoiser = cfg.denoiser
    if "base_channels" in denoiser:
        denoiser.base_channels = max(2, denoiser.base_channels // 8)
    for key, value in SHRINK.items():
        if isinstance(denoiser.get(key), int):
            denoiser[key] = value
    return cfg


def test_the_presets_hold_the_paper_its_single_changes_and_the_reference_families():
    assert set(PRESETS) >= {
        "paper", "no_skip", "bias_free_norm", "no_norm", "group_norm", "circular_padding", "reflect_padding",
        "levels_2", "levels_4", "width_half", "width_double", "max_pool", "nearest_conv_upsample", "attention", "blind",
        "conditioned", "empirical", "linear", "linear_rank", "polynomial", "polynomial_patch", "bottleneck_image",
        "dit",
    }


def test_every_preset_shares_the_study_settings_and_unet_presets_change_one_knob():
    configs = {name: OmegaConf.to_container(preset(name), resolve=True) for name in PRESETS}
    paper = configs["paper"]
    paper_unet = paper["denoiser"]
    width = paper["unet_width"]
    unet_defaults = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "denoiser" / "unet.yaml"))
    # The study sets the base width and the preconditioning of every trained preset at once.
    assert paper_unet == {**unet_defaults, "base_channels": width, "preconditioning": paper["study_preconditioning"]}
    assert paper["data"]["_target_"].endswith("FashionMNISTDataModule") and paper["data"]["image_size"] == 16
    shared = {key: value for key, value in paper.items() if key not in ("variant", "denoiser")}
    changed = {}
    for name, config in configs.items():
        denoiser = config.pop("denoiser")
        assert config.pop("variant") == name
        # A network shared by all levels takes EDM's level weights, which per-level networks
        # ignore (tests/test_objective.py), so the objective is still the study's one.
        if name in ("conditioned", "dit"):
            assert config["diffusion"].pop("level_weights") == "edm", name
            config["diffusion"]["level_weights"] = shared["diffusion"]["level_weights"]
        # Data, noise grid, sampler, schedule and measurement: one set for the whole study.
        assert config == shared, name
        if denoiser["_target_"] == UNET_TARGET:
            changed[name] = {key: value for key, value in denoiser.items() if value != paper_unet[key]}
    assert changed == {
        "paper": {},
        "no_skip": {"skip": "none"},
        "bias_free_norm": {"norm": "bias_free_batch"},
        "no_norm": {"norm": "none"},
        "group_norm": {"norm": "group"},
        "circular_padding": {"padding_mode": "circular"},
        "reflect_padding": {"padding_mode": "reflect"},
        "levels_2": {"num_blocks": 2},
        "levels_4": {"num_blocks": 4},
        "width_half": {"base_channels": width // 2},
        "width_double": {"base_channels": 2 * width},
        "max_pool": {"downsample": "max"},
        "nearest_conv_upsample": {"upsample": "nearest_conv"},
        "attention": {"attention": True},
        "blind": {"conditioning": "blind", "preconditioning": "residual"},  # edm needs the level blind never sees
        "conditioned": {"conditioning": "conditioned"},
    }


def test_one_data_override_changes_every_preset():
    for name in ("paper", "empirical", "dit"):
        data = preset(name, "data=celeba", "data.image_size=64").data
        assert data._target_.endswith("CelebADataModule") and data.image_size == 64


def test_the_sweep_and_its_wandb_twin_run_every_preset():
    runs = expand(SWEEP)
    assert sorted(runs) == sorted([f"experiment=paper/unet/{name}"] for name in PRESETS)
    assert runs[0] == ["experiment=paper/unet/paper"]
    wandb_sweep = yaml.safe_load((REPO / "sweeps" / "paper_unet.wandb.yaml").read_text())
    assert wandb_sweep["method"] == "grid"
    assert [[f"experiment={value}"] for value in wandb_sweep["parameters"]["experiment"]["values"]] == runs


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_trains_ten_steps_at_16x16_and_writes_run_json(tmp_path, name, one_thread, fashion_stand_in):
    cfg = shrunk(preset(name, *TINY, f"data.root={fashion_stand_in}", run_dir=tmp_path))
    summary = train(cfg)
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["config"]["variant"] == name
    assert written["num_parameters"] == summary["num_parameters"] > 0
    # Closed-form families are fitted in setup: no SGD step.
    assert written["global_step"] == (0 if cfg.denoiser.get("fit") == "closed_form" else 10)
    assert 0.0 <= written["measure"]["memorized_fraction"] <= 1.0
    assert len([key for key in written["metrics"] if key.startswith("val/loss_level_")]) == 3
    assert (tmp_path / "samples.npz").is_file()


def test_the_width_presets_halve_and_double_the_study_base_width():
    for width in (16, 32):
        widths = {
            name: preset(name, f"unet_width={width}").denoiser.base_channels
            for name in ("paper", "width_half", "width_double", "no_skip")
        }
        assert widths == {"paper": width, "width_half": width // 2, "width_double": 2 * width, "no_skip": width}
    # An odd base width has no half: building says so (the UNet's base_channels takes an integer).
    with pytest.raises(UserError, match=r"denoiser.base_channels=4.5 is not valid: it must be an integer"):
        build(preset("width_half", "unet_width=9").denoiser, "denoiser", data_shape=(1, 16, 16),
              grid=NoiseGrid(torch.tensor([0.1, 0.5, 0.9])))


def test_the_presets_trained_by_sgd_are_those_whose_denoiser_fit_is_sgd():
    found = trained_presets(PRESETS)
    for preset in PRESETS:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            fit = compose(config_name="train", overrides=[f"experiment=paper/unet/{preset}"]).denoiser.get("fit")
        assert (preset in found) == (fit == "sgd"), preset
    assert "paper" in found and "empirical" not in found and "els" not in found
    with pytest.raises(UserError, match="presets nope not in"):
        trained_presets(["paper", "nope"])
