"""The run's checkpoint, ``<run dir>/checkpoints/last.ckpt``: Lightning's ``ModelCheckpoint``
every few steps (written atomically by the run's checkpoint IO, see :mod:`lightning_diff.run.checkpoint`)."""

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_diff.callbacks.context import RunContext
from lightning_diff.run.checks import check_integer


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` every n training steps, written again after a validation that ran at a
    step it had just saved. Lightning saves a step's checkpoint when the training batch ends,
    before that step's validation; without the second write a run killed before the next
    checkpoint resumes without that validation in its ``val_history`` (the convergence check
    then reads the wrong points)."""

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking or trainer.global_step != self._last_global_step_saved:
            return
        trainer.save_checkpoint(self.format_checkpoint_name({}))


def checkpoint_for_run(run: RunContext, *, every_n_steps: int) -> ModelCheckpoint:
    """Keep one checkpoint, overwritten every ``every_n_steps`` training steps."""
    check_integer("callbacks.checkpoint_every_n_steps", every_n_steps, 1, "steps between checkpoints")
    return StepCheckpoint(
        dirpath=run.checkpoint.parent,
        filename=run.checkpoint.stem,
        every_n_train_steps=every_n_steps,
        save_top_k=1,
        enable_version_counter=False,
    )
