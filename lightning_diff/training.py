"""Training (or fitting) one denoiser from a composed config: ``train(cfg)``, a plain function that
``python -m lightning_diff.train``, the demo and the tests call. The run directory layout is
described in :mod:`lightning_diff.run.rundir`.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from lightning_diff.callbacks.context import RunContext
from lightning_diff.callbacks.ema import EMA, ema_weights
from lightning_diff.callbacks.measure import Measure
from lightning_diff.callbacks.progress import ProgressLines
from lightning_diff.callbacks.requeue import slurm_requeue
from lightning_diff.compose import build, plain
from lightning_diff.diffusion.config import Diffusion
from lightning_diff.diffusion.draw import draw_samples
from lightning_diff.errors import UserError
from lightning_diff.module import DiffusionModule, WarmupCosine
from lightning_diff.progress import interactive
from lightning_diff.run.checkpoint import AtomicCheckpointIO, load_checkpoint
from lightning_diff.run.checks import check_run_settings
from lightning_diff.run.distributed import node_names, run_ranks, spawns_ranks
from lightning_diff.run.lifecycle import open_wandb_run, run_finished
from lightning_diff.run.quiet import quiet_third_party
from lightning_diff.run.rundir import checkpoint_path, save_samples, wandb_run_id, write_json_atomic
from lightning_diff.seeding import sample_seeds
from lightning_diff.theory.optimum import excess_over_closed_form


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or fit) the configured denoiser; returns the ``run.json`` payload."""
    quiet_third_party()
    check_run_settings(cfg)
    build(cfg.sampler, "sampler")  # a wrong sampler setting stops the run before anything is built
    if spawns_ranks(cfg):
        return run_ranks(train, cfg)
    started = time.time()
    run_dir = Path(cfg.paths.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), verbose=False)
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    parts = build_callbacks(cfg, datamodule, module, checkpoint_path(run_dir))
    logger = build_logger(cfg, run_dir)
    trainer = build_trainer(cfg, module, parts, logger, run_dir)
    resume_from = checkpoint_to_resume(cfg, parts.checkpoint)
    with run_finished(logger):
        if logger and trainer.is_global_zero:
            open_wandb_run(logger)
        fit_to_the_end(trainer, module, datamodule, resume_from, parts.checkpoint)
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        trainer.save_checkpoint(parts.checkpoint, weights_only=False)
        summary = summarize(module, trainer, parts, metrics, started)
        if trainer.is_global_zero:
            summary.update(write_samples(cfg, module, parts.ema, run_dir))
            optimum = class_optimum(cfg, module, parts.ema, datamodule, logger)
            if optimum is not None:
                summary["class_optimum"] = optimum
            if cfg.get("theory") is not None:
                summary["theory"] = check_theory(cfg, module, parts.ema, datamodule, summary, run_dir, logger)
            if logger:
                summary["wandb_dir"] = summarize_in_wandb(logger, summary)
            write_json_atomic(run_dir / "run.json", summary)
            print_summary(run_dir, summary)
    return summary


def fit_to_the_end(
    trainer: L.Trainer, module: DiffusionModule, datamodule: Any, resume_from: Path | None, checkpoint: Path
) -> None:
    """Lightning's fit, or one clear error when SIGTERM (kill, the end of a SLURM attempt) stopped it.

    Lightning ends a SIGTERM'd fit with ``SIGTERMException``, a ``SystemExit`` of status 0 (older
    versions just return): the process would look finished to its caller with no run.json."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except SIGTERMException:
        pass
    if trainer.received_sigterm:
        raise UserError(
            f"the run received SIGTERM and stopped at step {trainer.global_step} of {trainer.max_steps}; "
            f"run the same command again to resume from its last checkpoint ({checkpoint})"
        )


def build_module(cfg: DictConfig, datamodule: Any) -> DiffusionModule:
    """The denoiser (asked for its conditioning mode and fit) with the shared objective."""
    diffusion: Diffusion = build(cfg.diffusion, "diffusion")
    grid = diffusion.noise_grid()
    denoiser = build(plain(cfg.denoiser), "denoiser", data_shape=datamodule.data_shape, grid=grid)
    trainable = denoiser.fit == "sgd"
    run_info = {
        "config": plain(cfg),
        "data_shape": list(datamodule.data_shape),
        "grid": grid.levels.tolist(),
        "is_image": bool(datamodule.is_image),
    }
    return DiffusionModule(
        denoiser,
        diffusion.objective(grid, denoiser.conditioning, sigma_data=cfg.denoiser.get("sigma_data")),
        optimizer=instantiate(cfg.optimizer) if trainable else None,
        schedule=WarmupCosine(total_steps=training_steps(cfg, denoiser.fit), **plain(cfg.lr_schedule)),
        seed=int(cfg.seed),
        run_info=run_info,
        closed_form_val_images=cfg.closed_form_val_images,
    )


def training_steps(cfg: DictConfig, fit: str) -> int:
    """``trainer.max_steps``, or 0 for closed-form families (fitted in setup, not trained)."""
    return int(cfg.trainer.max_steps) if fit == "sgd" else 0


@dataclass
class RunParts:
    """The callbacks of a run and what the run reads back from them."""

    callbacks: list[L.Callback]
    plugins: list[Any]
    checkpoint: Path
    ema: EMA | None
    measure: Measure | None


def build_callbacks(cfg: DictConfig, datamodule: Any, module: DiffusionModule, ckpt: Path) -> RunParts:
    """Every callback the config lists (conf/callback/, in order), then progress lines in logs and
    SLURM requeue, which follow from where the run is, not from the config."""
    run = RunContext(cfg, datamodule, module, ckpt)
    for name, node in cfg.callbacks.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            callback = build(node, f"callbacks.{name}", run=run)
            if callback is not None:
                run.built[str(name)] = callback
    callbacks = list(run.built.values())
    if cfg.trainer.get("enable_progress_bar", True) and not interactive():
        callbacks.append(ProgressLines())
    requeue_callbacks, requeue_plugins = slurm_requeue(ckpt)  # under SLURM: checkpoint + requeue on SIGUSR1
    ema, measure = run.built.get("ema"), run.built.get("measure")
    return RunParts(
        callbacks + requeue_callbacks,
        [AtomicCheckpointIO(), *requeue_plugins],
        ckpt,
        ema if isinstance(ema, EMA) else None,
        measure if isinstance(measure, Measure) else None,
    )


def build_logger(cfg: DictConfig, run_dir: Path) -> Any:
    """The configured logger under the run's W&B ID (kept in the run directory), or False."""
    if cfg.get("logger") is None:
        return False
    logger = build(cfg.logger, "logger", save_dir=str(run_dir), id=wandb_run_id(run_dir), resume="allow")
    # Lightning always passes anonymous=None, and W&B warns on every run that the setting has no effect.
    init_settings = getattr(logger, "_wandb_init", {})
    if "anonymous" in init_settings and init_settings["anonymous"] is None:
        del init_settings["anonymous"]
    return logger


def build_trainer(cfg: DictConfig, module: DiffusionModule, parts: RunParts, logger: Any, run_dir: Path) -> L.Trainer:
    trainer_cfg = dict(plain(cfg.trainer), max_steps=training_steps(cfg, module.denoiser.fit))
    return build(
        trainer_cfg, "trainer", callbacks=parts.callbacks, logger=logger, plugins=parts.plugins,
        default_root_dir=str(run_dir),
    )


def checkpoint_to_resume(cfg: DictConfig, ckpt: Path) -> Path | None:
    """The run's checkpoint when it exists and ``resume`` is on; a corrupt or unsafe one fails here."""
    if not (cfg.resume and ckpt.is_file()):
        return None
    load_checkpoint(ckpt)
    return ckpt


def summarize(
    module: DiffusionModule, trainer: L.Trainer, parts: RunParts, metrics: dict[str, Any], started: float
) -> dict[str, Any]:
    """The ``run.json`` payload every rank agrees on (a collective: node names are gathered)."""
    summary = {
        "config": module.run_info["config"],
        "num_parameters": module.num_parameters(),
        "metrics": {key: float(value) for key, value in metrics.items()},
        "checkpoint": str(parts.checkpoint),
        "global_step": int(trainer.global_step),
        "world_size": int(trainer.world_size),
        "nodes": node_names(),
        "wall_time_s": time.time() - started,
        "val_history": module.val_history,
    }
    if parts.measure is not None and parts.measure.history:
        summary["measure"] = parts.measure.history[-1]  # the final measurement: memorized fraction, d1, fid@<n>
    return summary


def write_samples(cfg: DictConfig, module: DiffusionModule, ema: EMA | None, run_dir: Path) -> dict[str, Any]:
    """``num_samples`` samples of the (EMA) weights into ``samples.npz``."""
    count = int(cfg.num_samples)
    if count <= 0:
        return {}
    seeds = sample_seeds(int(cfg.sample_seed), count)
    sampler = build(cfg.sampler, "sampler")
    with ema_weights(ema, module):
        samples = draw_samples(
            module.denoiser, module.grid, module.run_info["data_shape"], seeds, sampler=sampler,
            is_image=module.run_info["is_image"], device=module.device, progress=True,
        )
    path = run_dir / "samples.npz"
    save_samples(path, samples.numpy(), module.grid.levels.tolist()[::-1], seeds)
    return {"samples": str(path), "sampler": repr(sampler)}


def class_optimum(cfg: DictConfig, module: DiffusionModule, ema: EMA | None, datamodule: Any, logger: Any) -> dict[str, Any] | None:
    """For an SGD run of a family that also has a closed form (linear, polynomial): its excess
    validation loss over that closed form per level (EMA weights); None for other runs."""
    if module.denoiser.fit != "sgd":
        return None
    twin = {**plain(cfg.denoiser), "fit": "closed_form", "conditioning": "per_level"}
    try:
        closed_form = build(twin, "denoiser", data_shape=datamodule.data_shape, grid=module.grid)
    except UserError:
        return None  # the family is trained by SGD only (unet, dit, bottleneck)
    with ema_weights(ema, module):
        result = excess_over_closed_form(
            module.denoiser, closed_form, module.objective, datamodule.train_data, datamodule.val_data.to(module.device), int(cfg.seed)
        )
    if logger:
        excess = {f"class_optimum/excess_val_loss_level_{k}": v for k, v in enumerate(result["excess_val_loss_per_level"])}
        logger.log_metrics({**excess, "class_optimum/excess_val_loss_relative_max": result["excess_val_loss_relative_max"]})
    return result


def check_theory(
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
            sampler=build(cfg.sampler, "sampler"),
            samples=samples,
            run_dir=run_dir,
        )
    if logger:
        logger.log_metrics({f"theory/{key}": value for key, value in result.items() if isinstance(value, (int, float))})
        if "figure" in result:
            import wandb

            logger.experiment.log({"theory/figure": wandb.Image(result["figure"])})
    return result


def summarize_in_wandb(logger: Any, summary: dict[str, Any]) -> str:
    """Give the W&B run what run.json has (so a report read from a W&B group sees it); its folder."""
    logger.log_hyperparams(summary["config"])
    logger.experiment.summary.update({"num_parameters": summary["num_parameters"], "wall_time_s": summary["wall_time_s"]})
    return str(Path(logger.experiment.dir).parent)


def print_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """The block a run's stdout ends with: where everything it wrote is."""
    print(f"run directory: {run_dir}\nrun summary:   {run_dir / 'run.json'}\ncheckpoint:    {summary['checkpoint']}")
    if "samples" in summary:
        print(f"samples:       {summary['samples']}")
    if "wandb_dir" in summary:
        print(f"W&B run:       {summary['wandb_dir']} (offline: upload with `wandb sync` from a machine with network)")
