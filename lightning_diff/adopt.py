"""``python -m lightning_diff.adopt path=DIR out=RUN_DIR [scheduler=FILE] [num_inference_steps=K] [data=<name>]``.

Turns a diffusers model trained elsewhere (a pipeline folder, or a ``UNet2DModel`` folder plus a
scheduler config) into a run directory that every other entry point reads like one of ours
(:mod:`lightning_diff.run.rundir`): its denoiser is the ``diffusers_unet`` family
(:mod:`lightning_diff.denoisers.diffusers_unet`), D(y, t) -> x0 at t = 1 - alphas_cumprod of the
scheduler's timesteps for K steps, which are the run's grid.

- ``checkpoints/last.ckpt``: the UNet's weights under ``state_dict`` (keys prefixed ``denoiser.``, as a
  training run's) and the run's description (config, data shape, grid, ``is_image``) as plain data;
- ``samples.npz``: ``num_samples`` samples from the seeds of ``sample_seed``, with the run's sampler;
- ``run.json``: the config, ``num_parameters``, the paths and ``adopted`` (where the model came from,
  its scheduler, prediction type, K and timesteps).

``data=<name>`` records the images the model was trained on (memorization, calibration, the
report's figure); they must have the model's shape. Everything is checked before anything is
written, and the files are written atomically: a mistake leaves no run directory behind.
"""

import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_diff.compose import build, plain
from lightning_diff.denoisers.diffusers_folder import DiffusersModel, read_model
from lightning_diff.denoisers.diffusers_unet import denoiser_node, diffusers_module, image_shape
from lightning_diff.diffusion.draw import draw_samples
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError
from lightning_diff.run.checkpoint import CONFIG_KEY, atomic_torch_save
from lightning_diff.run.checks import check_integer
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import checkpoint_path, save_samples, write_json_atomic
from lightning_diff.seeding import sample_seeds

INTEGERS = {
    "num_inference_steps": (1, "the scheduler's inference steps, the run's grid size K"),
    "num_samples": (0, "samples written into samples.npz (0: none)"),
    "seed": (0, "the run's seed"),
    "sample_seed": (0, "the seed of the samples"),
}


def output_folder(cfg: DictConfig) -> Path:
    """``out``: a folder that holds no run yet."""
    named = {"path": "the saved diffusers model (a pipeline or UNet2DModel folder)", "out": "the run directory"}
    for key, what in named.items():
        if cfg.get(key) is None:
            raise UserError(f"give {key}=DIR: {what}; python -m lightning_diff.adopt path=DIR out=RUN_DIR")
    out = Path(str(cfg.out)).expanduser().resolve()
    held = [name for name in ("run.json", "checkpoints/last.ckpt", "samples.npz") if (out / name).exists()]
    if held:
        raise UserError(f"out={out} already holds a run ({', '.join(held)}); choose another out= or remove it first")
    return out


def checked_data(cfg: DictConfig, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The ``data`` node (plain), after checking that its images have the model's shape; None without ``data=``."""
    if cfg.get("data") is None:
        return None
    node = plain(cfg.data)
    datamodule = build(node, "data")
    datamodule.setup("fit")
    found = tuple(datamodule.data_shape)
    if not datamodule.is_image or found != shape:
        kind = "images" if datamodule.is_image else "data that are not images in [-1, 1]"
        channels, height = shape[0], shape[1]
        raise UserError(
            f"the data ({node['_target_'].rsplit('.', 1)[-1]}) are {kind} of shape {found}, but the model makes "
            f"images of shape {shape}; choose data with the model's images (for image datasets "
            f"data.image_size={height} data.channels={channels}; npz: data.is_image=true), or adopt without data="
        )
    return node


def run_config(cfg: DictConfig, node: dict[str, Any], data: dict[str, Any] | None, out: Path) -> dict[str, Any]:
    """The run's resolved config, as train.py stores it: what rebuilds, samples and names the run."""
    # The defaults of every diffusion setting (the code has none), with the scheduler's grid.
    diffusion = dict(OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "diffusion" / "default.yaml")))
    levels = node["levels"]
    diffusion.update(num_levels=len(levels), grid_values=levels, t_min=levels[0], t_max=levels[-1])
    return {
        "denoiser": node,
        "data": data,
        "diffusion": diffusion,
        "sampler": plain(cfg.sampler),
        "seed": int(cfg.seed),
        "sample_seed": int(cfg.sample_seed),
        "variant": str(cfg.variant) if cfg.get("variant") else Path(str(cfg.path)).expanduser().resolve().name,
        "calibrated_on": None,
        "paths": {"run_dir": str(out)},
    }


def provenance(cfg: DictConfig, model: DiffusersModel) -> dict[str, Any]:
    """What ``run.json`` records under ``adopted``: where the model came from and how it was set up."""
    return {
        "source": str(Path(str(cfg.path)).expanduser().resolve()),
        "unet": str(model.unet_folder.resolve()),
        "scheduler_config": str(model.scheduler_file.resolve()),
        "scheduler": type(model.scheduler).__name__,
        "prediction_type": model.scheduler.config.get("prediction_type", "epsilon"),
        "num_inference_steps": int(cfg.num_inference_steps),
        "timesteps": [int(tau) for tau in model.scheduler.timesteps],  # in the order sampled
        "diffusers_version": diffusers_module().__version__,
    }


def adopt(cfg: DictConfig) -> dict[str, Any]:
    """Write the run directory ``out`` of the diffusers model at ``path``; returns the ``run.json`` payload."""
    out = output_folder(cfg)
    for key, (minimum, meaning) in INTEGERS.items():
        check_integer(key, cfg.get(key), minimum, meaning)
    sampler = build(cfg.sampler, "sampler")
    model = read_model(cfg.path, cfg.get("scheduler"), int(cfg.num_inference_steps))
    node = denoiser_node(dict(model.unet.config), model.scheduler)
    shape = image_shape(node["unet_config"])
    grid = NoiseGrid(torch.tensor(node["levels"], dtype=torch.float64))
    denoiser = build(node, "denoiser", data_shape=shape, grid=grid)  # from the stored node, as every reader rebuilds it
    denoiser.unet.load_state_dict(model.unet.state_dict())
    config = run_config(cfg, node, checked_data(cfg, shape), out)
    info = {"config": config, "data_shape": list(shape), "grid": grid.levels.tolist(), "is_image": True}
    summary = {
        "config": config, "num_parameters": denoiser.num_parameters(), "checkpoint": str(checkpoint_path(out)),
        "adopted": provenance(cfg, model),
    }
    seeds = sample_seeds(int(cfg.sample_seed), int(cfg.num_samples))
    samples = None
    if seeds:
        samples = draw_samples(
            denoiser.to(cfg.device), grid, shape, seeds, sampler=sampler, is_image=True, device=cfg.device,
            progress=bool(cfg.progress),
        )
    state = {f"denoiser.{key}": value.detach().cpu() for key, value in denoiser.state_dict().items()}
    atomic_torch_save({"state_dict": state, CONFIG_KEY: info}, checkpoint_path(out))
    if samples is not None:
        save_samples(out / "samples.npz", samples.numpy(), grid.levels.tolist()[::-1], seeds)
        summary.update(samples=str(out / "samples.npz"), sampler=repr(sampler))
    write_json_atomic(out / "run.json", summary)  # last: a run.json marks a finished run
    print_summary(out, summary)
    return summary


def print_summary(out: Path, summary: dict[str, Any]) -> None:
    """Where everything went, as a training run ends."""
    adopted = summary["adopted"]
    print(
        f"adopted {adopted['source']} ({adopted['scheduler']}, {adopted['prediction_type']}, "
        f"{adopted['num_inference_steps']} levels)\nrun directory: {out}\nrun summary:   {out / 'run.json'}\n"
        f"checkpoint:    {summary['checkpoint']}"
    )
    if "samples" in summary:
        print(f"samples:       {summary['samples']}")
    sys.stdout.flush()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="adopt")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: adopt(cfg))


if __name__ == "__main__":
    check_command_line("adopt")
    main()
