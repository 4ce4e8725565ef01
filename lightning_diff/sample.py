"""``python -m lightning_diff.sample ckpt=PATH num_samples=N seed=S out=FILE.npz``.

Rebuilds the denoiser from the checkpoint's stored config (no code is unpickled), samples
with fixed per-sample seeds and writes ``samples`` (N, *data_shape), ``levels`` (the grid in
the order sampled) and ``seeds`` into ``out``. Image samples are clipped to [-1, 1]; other
data is left unclipped.
"""

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from lightning_diff.compose import build
from lightning_diff.diffusion.config import Diffusion
from lightning_diff.diffusion.draw import draw_samples
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.samplers import make_sampler
from lightning_diff.errors import UserError
from lightning_diff.run.checkpoint import load_checkpoint, run_config
from lightning_diff.run.checks import check_integer
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import save_samples
from lightning_diff.seeding import sample_seeds

WEIGHTS = {"ema": "state_dict", "raw": "current_model_state"}


def load_denoiser(ckpt_path: str | Path, weights: str = "ema") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained denoiser of a checkpoint (in eval mode) and the run's stored description."""
    if weights not in WEIGHTS:
        raise UserError(f"weights={weights!r} is not valid; choose one of {', '.join(WEIGHTS)}")
    checkpoint = load_checkpoint(ckpt_path)
    info = run_config(checkpoint, ckpt_path)
    state = checkpoint.get(WEIGHTS[weights], checkpoint["state_dict"])
    grid = NoiseGrid(torch.tensor(info["grid"], dtype=torch.float64))
    denoiser = build(info["config"]["denoiser"], "denoiser", data_shape=tuple(info["data_shape"]), grid=grid)
    prefix = "denoiser."
    own = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    try:
        denoiser.load_state_dict(own)
    except RuntimeError as err:
        raise UserError(f"{ckpt_path}: the weights do not fit the denoiser its config describes ({err})") from err
    return denoiser.eval(), info


def sample(cfg: DictConfig) -> Path:
    """Write the samples ``cfg`` asks for; returns the output path."""
    denoiser, info = load_denoiser(cfg.ckpt, cfg.weights)
    run_cfg = info["config"]
    sampler = make_sampler(cfg.sampler.name if cfg.get("sampler") else run_cfg["sampler"]["name"])
    if cfg.num_levels is None:
        grid = NoiseGrid(torch.tensor(info["grid"], dtype=torch.float64))
    else:
        grid = Diffusion.from_run(run_cfg["diffusion"]).noise_grid(num_levels=int(cfg.num_levels))
    check_integer("num_samples", cfg.num_samples, 1, "samples to draw")
    check_integer("seed", cfg.seed, 0, "the seed of sample 0")
    count = int(cfg.num_samples)
    seeds = sample_seeds(int(cfg.seed), count)
    batch_size = int(cfg.sampler.batch_size) if cfg.get("sampler") else int(run_cfg["sampler"]["batch_size"])
    device = torch.device(cfg.device)
    samples = draw_samples(
        denoiser.to(device), grid, info["data_shape"], seeds, sampler=sampler.name, batch_size=batch_size,
        is_image=info["is_image"], device=device, progress=cfg.progress,
    )
    out = Path(cfg.out)
    save_samples(out, samples.numpy(), grid.levels.tolist()[::-1], seeds)
    print(f"wrote {count} samples ({sampler.name}, {len(grid)} levels) to {out}")
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: sample(cfg))


if __name__ == "__main__":
    check_command_line("sample")
    main()
