"""Checkpoint and requeue a SLURM job on its pre-timeout signal, at a step boundary.

``--signal=SIGUSR1@90`` (slurm/*.sbatch) makes SLURM send SIGUSR1 to every task 90 s before
the time limit. The handler only notes it. At the end of the next training step the ranks
agree that it came (one rank having it is enough), save ``checkpoints/last.ckpt`` together,
and rank 0 asks SLURM to requeue the job and finishes the W&B run. SLURM then ends this attempt (SIGTERM, which
Lightning turns into a stop at the next step) and starts the job again under the same job
id, so in the same run directory, where it resumes from that checkpoint.

This replaces Lightning's own SLURM auto-requeue, which saves from inside the signal handler,
in the middle of a step: under DDP its barrier there can meet another rank's gradient
all-reduce and hang the job (seen on the test cluster of tests/test_slurm.py).
"""

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1


def slurm_job_id() -> str:
    """This job's id as scontrol takes it (``<array job>_<task>`` for an array task)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue_job() -> bool:
    """Ask SLURM to requeue this job; False (with a warning) when it refuses."""
    job = slurm_job_id()
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning(
            "could not requeue SLURM job %s (%s); training goes on until the time limit. Submit with --requeue, "
            "or resubmit by hand: the run resumes from its last checkpoint",
            job,
            result.stderr.strip(),
        )
        return False
    log.info("checkpoint saved; SLURM job %s requeued: it resumes in the same run directory", job)
    return True


class RequeueOnSignal(Checkpoint):
    """On SIGUSR1, save ``checkpoint`` at the next step boundary (all ranks) and requeue the job.

    A :class:`Checkpoint` subclass, so Lightning runs it after the other callbacks of a step
    (the EMA update included) and the saved state is that of a completed step.
    """

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.signalled = False
        self._previous_handler: Any = None
        self._installed = False

    def _note_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and not self._installed:
            self._previous_handler = signal.signal(REQUEUE_SIGNAL, self._note_signal)
            self._installed = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._installed:
            signal.signal(REQUEUE_SIGNAL, self._previous_handler or signal.SIG_DFL)
            self._installed = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self.signalled = False
        trainer.save_checkpoint(self.checkpoint)
        if trainer.is_global_zero and requeue_job():
            release_wandb_run(trainer)


def release_wandb_run(trainer: L.Trainer) -> None:
    """Finish this attempt's W&B run now and log no more to it.

    SLURM ends the attempt within seconds; a W&B run cut off there can stay 'in use' for
    minutes, and the requeued attempt could not resume it.
    """
    kept = [logger for logger in trainer.loggers if not isinstance(logger, WandbLogger)]
    if len(kept) == len(trainer.loggers):
        return
    import wandb  # only runs that log to W&B get here

    wandb.finish()
    trainer.loggers = kept


def slurm_requeue(checkpoint: Path) -> tuple[list[L.Callback], list[Any]]:
    """Callbacks and Trainer plugins for requeue on SIGUSR1 under SLURM; nothing elsewhere."""
    if not SLURMEnvironment.detect():
        return [], []
    return [RequeueOnSignal(checkpoint)], [SLURMEnvironment(auto_requeue=False)]
