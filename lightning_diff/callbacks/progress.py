"""Training progress for a log file: Lightning's bar redraws itself with carriage returns,
which pile up into one unreadable line where stderr is not a terminal (CI, SLURM's output file)."""

import sys
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from lightning_diff.progress import LogLines


class ProgressLines(ProgressBar):
    """Training progress for logs: ``train: step 250/500 (50%), loss 0.0561, val/loss 0.0549,
    4.1/s, ETA 0:01:01`` every LOG_EVERY_PERCENT of the steps (rank 0 only)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.enabled = True
        self.lines: LogLines | None = None

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
        self.lines = LogLines(total, "train", "step", 0.0, self.stream or sys.stderr, start=trainer.global_step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.enabled or self.lines is None or not trainer.is_global_zero:
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = "".join(
            f", {name.removeprefix('train/')} {float(metrics[name]):.4g}" for name in ("train/loss", "val/loss") if name in metrics
        )
        self.lines.update(trainer.global_step, shown)
