"""The run's checkpoint, ``<run dir>/checkpoints/last.ckpt``: Lightning's ``ModelCheckpoint``
every few steps (written atomically by the run's checkpoint IO, see :mod:`lightning_diff.run.checkpoint`)."""

from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_diff.callbacks.context import RunContext
from lightning_diff.run.checks import check_integer


def checkpoint_for_run(run: RunContext, *, every_n_steps: int) -> ModelCheckpoint:
    """Keep one checkpoint, overwritten every ``every_n_steps`` training steps."""
    check_integer("callbacks.checkpoint_every_n_steps", every_n_steps, 1, "steps between checkpoints")
    return ModelCheckpoint(
        dirpath=run.checkpoint.parent,
        filename=run.checkpoint.stem,
        every_n_train_steps=every_n_steps,
        save_top_k=1,
        enable_version_counter=False,
    )
