"""``python -m lightning_diff.train <hydra overrides>``: train or fit one denoiser.

``train(cfg)`` is a plain function (tests call it); :func:`main` wraps it with Hydra. The run
directory layout is described in :mod:`lightning_diff.run.rundir`.
"""

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from lightning_diff.callbacks.ema import EMA, ema_weights
from lightning_diff.callbacks.measure import Measure
from lightning_diff.callbacks.progress import ProgressLines
from lightning_diff.callbacks.requeue import slurm_requeue
from lightning_diff.compose import build, grid_from, objective_from, plain
from lightning_diff.diffusion.samplers import make_sampler
from lightning_diff.errors import UserError
from lightning_diff.module import DiffusionModule, WarmupCosine, sample_seeds
from lightning_diff.progress import interactive
from lightning_diff.run.checkpoint import AtomicCheckpointIO, load_checkpoint
from lightning_diff.run.checks import check_run_settings
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.distributed import node_names, run_ranks, spawns_ranks
from lightning_diff.run.quiet import quiet_third_party
from lightning_diff.run.rundir import checkpoint_path, save_samples, wandb_run_id, write_json_atomic


def _logger(cfg: DictConfig, run_dir: Path) -> Any:
    if cfg.get("logger") is None:
        return False
    logger = build(cfg.logger, "logger", save_dir=str(run_dir), id=wandb_run_id(run_dir), resume="allow")
    # Lightning always passes anonymous=None, and W&B warns on every run that the setting has no effect.
    init_settings = getattr(logger, "_wandb_init", {})
    if "anonymous" in init_settings and init_settings["anonymous"] is None:
        del init_settings["anonymous"]
    return logger


# A requeued SLURM job can start while the previous attempt's W&B process still flushes the
# same run, and W&B refuses the run ID until it lets go (seconds).
_WANDB_ID_WAIT_S = 120.0
_WANDB_ID_POLL_S = 2.0


def _open_wandb_run(logger: Any) -> None:
    """Start the logger's W&B run now, waiting while an earlier attempt of this run still holds its ID."""
    deadline = time.monotonic() + _WANDB_ID_WAIT_S
    while True:
        try:
            logger.experiment
            return
        except Exception as err:  # wandb raises its own ServerResponseError type
            if "is in use" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(_WANDB_ID_POLL_S)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or fit) the configured denoiser; returns the ``run.json`` payload."""
    quiet_third_party()
    check_run_settings(cfg)
    if spawns_ranks(cfg):
        return run_ranks(train, cfg)
    started = time.time()
    run_dir = Path(cfg.paths.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), verbose=False)

    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    diffusion = plain(cfg.diffusion)
    grid = grid_from(diffusion)
    denoiser_cfg = plain(cfg.denoiser)
    denoiser = build(denoiser_cfg, "denoiser", data_shape=datamodule.data_shape, grid=grid)
    objective = objective_from(diffusion, grid, denoiser_cfg.get("conditioning", "per_level"))
    trainable = any(p.requires_grad for p in denoiser.parameters())

    trainer_cfg = dict(plain(cfg.trainer))
    if not trainable:
        trainer_cfg["max_steps"] = 0  # closed-form families are fitted in setup, not trained
    schedule = WarmupCosine(total_steps=int(trainer_cfg["max_steps"]), **plain(cfg.lr_schedule))
    run_info = {
        "config": plain(cfg),
        "data_shape": list(datamodule.data_shape),
        "grid": grid.levels.tolist(),
        "is_image": bool(datamodule.is_image),
    }
    module = DiffusionModule(
        denoiser,
        objective,
        optimizer=instantiate(cfg.optimizer) if trainable else None,
        schedule=schedule,
        seed=int(cfg.seed),
        run_info=run_info,
    )

    ckpt = checkpoint_path(run_dir)
    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=ckpt.parent,
            filename=ckpt.stem,
            every_n_train_steps=int(cfg.callbacks.checkpoint_every_n_steps),
            save_top_k=1,
            enable_version_counter=False,
        )
    ]
    ema = EMA(float(cfg.callbacks.ema.decay)) if trainable and cfg.callbacks.ema.enabled else None
    if ema is not None:
        callbacks.append(ema)
    measure = None
    if cfg.callbacks.get("measure") is not None and cfg.callbacks.measure.enabled:
        measure = Measure.from_config(cfg, datamodule, ema)
        callbacks.append(measure)
    if trainer_cfg.get("enable_progress_bar", True) and not interactive():
        callbacks.append(ProgressLines())
    requeue_callbacks, requeue_plugins = slurm_requeue(ckpt)  # under SLURM: checkpoint + requeue on SIGUSR1
    callbacks += requeue_callbacks
    logger = _logger(cfg, run_dir)
    trainer = build(
        trainer_cfg,
        "trainer",
        callbacks=callbacks,
        logger=logger,
        plugins=[AtomicCheckpointIO(), *requeue_plugins],
        default_root_dir=str(run_dir),
    )
    resume_from = ckpt if cfg.resume and ckpt.is_file() else None
    if resume_from is not None:
        load_checkpoint(resume_from)  # a corrupt or unsafe file fails here with one clear message

    exit_code = 1
    try:
        if logger and trainer.is_global_zero:
            _open_wandb_run(logger)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        trainer.save_checkpoint(ckpt, weights_only=False)
        summary = {
            "config": run_info["config"],
            "num_parameters": module.num_parameters(),
            "metrics": {key: float(value) for key, value in metrics.items()},
            "checkpoint": str(ckpt),
            "global_step": int(trainer.global_step),
            "world_size": int(trainer.world_size),
            "nodes": node_names(),
            "wall_time_s": time.time() - started,
        }
        if measure is not None and measure.history:
            summary["measure"] = measure.history[-1]  # the final measurement: memorized fraction, d1, fid@<n>
        if trainer.is_global_zero:
            summary.update(_write_samples(cfg, module, ema, run_dir))
            if cfg.get("theory") is not None:
                summary["theory"] = _check_theory(cfg, module, ema, datamodule, summary, run_dir, logger)
            if logger:
                summary["wandb_dir"] = str(Path(logger.experiment.dir).parent)
                # So a report read from W&B (python -m lightning_diff.report wandb_group=...) has what run.json has.
                logger.log_hyperparams(run_info["config"])
                logger.experiment.summary.update(
                    {"num_parameters": summary["num_parameters"], "wall_time_s": summary["wall_time_s"]}
                )
            write_json_atomic(run_dir / "run.json", summary)
            print(f"run directory: {run_dir}\nrun summary:   {run_dir / 'run.json'}\ncheckpoint:    {ckpt}")
            if "samples" in summary:
                print(f"samples:       {summary['samples']}")
            if "wandb_dir" in summary:
                print(f"W&B run:       {summary['wandb_dir']} (offline: upload with `wandb sync` from a machine with network)")
        exit_code = 0
        return summary
    finally:
        if logger:
            import wandb  # only with a logger: a run with logger=none needs no wandb installed

            wandb.finish(exit_code=exit_code)


def _write_samples(cfg: DictConfig, module: DiffusionModule, ema: EMA | None, run_dir: Path) -> dict[str, Any]:
    count = int(cfg.num_samples)
    if count <= 0:
        return {}
    sampler = make_sampler(cfg.sampler.name)
    seeds = sample_seeds(int(cfg.seed), count)
    with ema_weights(ema, module):
        samples = module.generate(sampler, seeds, batch_size=int(cfg.sampler.batch_size))
    if module.run_info["is_image"]:
        samples = samples.clamp(-1, 1)
    path = run_dir / "samples.npz"
    save_samples(path, samples.numpy(), module.grid.levels.tolist()[::-1], seeds)
    return {"samples": str(path), "sampler": sampler.name}


def _check_theory(
    cfg: DictConfig, module: DiffusionModule, ema: EMA | None, datamodule: Any, summary: dict[str, Any], run_dir: Path, logger: Any
) -> dict[str, Any]:
    """Compare the samples just written with the family's prediction (``theory:``); log it to W&B."""
    if "samples" not in summary:
        raise UserError("theory: compares samples with a prediction, so it needs num_samples > 0")
    check = build(cfg.theory, "theory")
    samples = torch.from_numpy(np.load(summary["samples"])["samples"])
    module.denoiser.eval()
    with ema_weights(ema, module):
        result = check(
            denoiser=module.denoiser,
            train_data=datamodule.train_data,
            grid=module.grid,
            sampler_name=str(cfg.sampler.name),
            samples=samples,
            run_dir=run_dir,
        )
    if logger:
        logger.log_metrics({f"theory/{key}": value for key, value in result.items() if isinstance(value, (int, float))})
        if "figure" in result:
            import wandb

            logger.experiment.log({"theory/figure": wandb.Image(result["figure"])})
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: train(cfg))


if __name__ == "__main__":
    check_command_line("train")
    main()
