"""``python -m lightning_diff.sample ckpt=PATH num_samples=N seed=S out=FILE.npz``.

Rebuilds the run from the checkpoint's stored config (:class:`~lightning_diff.trained.TrainedRun`;
no code is unpickled), samples with fixed per-sample seeds and writes ``samples`` (N,
*data_shape), ``levels`` (the grid in the order sampled) and ``seeds`` into ``out``. Image
samples are clipped to [-1, 1]; other data is left unclipped. ``sampler=`` draws with another
sampler than the run's, ``num_levels=K`` on another grid (denoisers that accept any t).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightning_diff.compose import build
from lightning_diff.diffusion.config import Diffusion
from lightning_diff.run.checks import check_integer
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import save_samples
from lightning_diff.seeding import sample_seeds
from lightning_diff.trained import TrainedRun


def sample(cfg: DictConfig) -> Path:
    """Write the samples ``cfg`` asks for; returns the output path."""
    check_integer("num_samples", cfg.num_samples, 1, "samples to draw")
    check_integer("seed", cfg.seed, 0, "the seed of sample 0")
    run = TrainedRun.load(cfg.ckpt, cfg.weights)
    sampler = build(cfg.sampler, "sampler") if cfg.get("sampler") else run.sampler
    grid = None
    if cfg.num_levels is not None:
        check_integer("num_levels", cfg.num_levels, 1, "levels of the sampling grid")
        grid = Diffusion.from_run(run.config["diffusion"]).noise_grid(num_levels=int(cfg.num_levels))
    seeds = sample_seeds(int(cfg.seed), int(cfg.num_samples))
    samples = run.draw(seeds, sampler=sampler, grid=grid, device=cfg.device, progress=cfg.progress)
    levels = (grid or run.grid).levels.tolist()[::-1]
    out = Path(cfg.out)
    save_samples(out, samples.numpy(), levels, seeds)
    print(f"wrote {len(seeds)} samples ({sampler!r}, {len(levels)} levels) to {out}")
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: sample(cfg))


if __name__ == "__main__":
    check_command_line("sample")
    main()
