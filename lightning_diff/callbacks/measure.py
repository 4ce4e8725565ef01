"""Measure a run while it trains: every ``every_n_steps`` steps and at the end of training,
sample with fixed seeds from the EMA weights, compute the metrics the top-level ``metrics``
node configures, and log them.

Every logger gets the numbers (``measure/memorized_fraction``, ``measure/fid@64``, ...); a
W&B logger also gets, in the same history row, a grid of samples, a grid pairing each sample
with its nearest training image and d1, a histogram of d1 and a per-sample table. Under DDP
each rank samples its own block of the seeds; the metrics gather over all ranks, and rank 0
draws the pictures of the first samples.
"""

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_diff.callbacks.context import RunContext
from lightning_diff.callbacks.ema import EMA, ema_weights
from lightning_diff.compose import build, plain
from lightning_diff.diffusion.draw import draw_samples
from lightning_diff.diffusion.samplers import Sampler
from lightning_diff.errors import UserError
from lightning_diff.figures.grids import nearest_grid, sample_grid
from lightning_diff.metrics.memorization import NearestNeighbours
from lightning_diff.metrics.suite import MeasurementPlan, MetricSuite, plan_measurement
from lightning_diff.module import DiffusionModule
from lightning_diff.progress import with_progress
from lightning_diff.seeding import sample_seeds

PREFIX = "measure/"
TABLE_COLUMNS = ["index", "seed", "d1", "d2", "ratio", "memorized", "nearest_index", "second_index"]
# Progress bars appear only for work that lasts longer than this.
PROGRESS_DELAY_S = 3.0


class Measure(L.Callback):
    """Sample, measure and log during training.

    Args:
        train: the training set (N, *data_shape).
        is_image: whether the data are images in [-1, 1].
        settings: the ``callbacks.measure`` node: every_n_steps, num_samples, batch_size, grid_size.
        plan: what is measured (:func:`~lightning_diff.metrics.suite.plan_measurement` of the ``metrics`` node).
        sampler: the run's sampler object (with its settings); the run's own grid is used.
        seed: sample i is drawn from seed ``derive_seed(seed, i)``, the same at every measurement.
        ema: the EMA callback whose weights are sampled (None: the raw weights).
    """

    def __init__(
        self,
        train: Tensor,
        is_image: bool,
        settings: Mapping[str, Any],
        plan: MeasurementPlan,
        sampler: Sampler,
        seed: int,
        ema: EMA | None = None,
    ) -> None:
        # Defaults live in conf/callback/measure.yaml only: every key is required here.
        self.every_n_steps = int(settings["every_n_steps"])
        self.num_samples = int(settings["num_samples"])
        self.batch_size = int(settings["batch_size"])
        self.grid_size = int(settings["grid_size"])
        if self.every_n_steps < 0 or self.num_samples < 2 or self.batch_size < 1 or self.grid_size < 0:
            raise UserError(
                "callbacks.measure needs every_n_steps >= 0 (0: only at the end), num_samples >= 2, batch_size >= 1 "
                f"and grid_size >= 0; got {self.every_n_steps}, {self.num_samples}, {self.batch_size}, {self.grid_size}"
            )
        self.train = train
        self.data_shape = tuple(train.shape[1:])
        self.is_image = is_image
        self.plan = plan
        for note in plan.notes:
            rank_zero_warn(note)
        self.sampler = sampler
        self.seed = seed
        self.ema = ema
        self.suite: MetricSuite | None = None
        self.history: list[dict[str, float]] = []
        self._last_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.suite is not None:
            return
        # Built here, in each process: a TorchScript feature network cannot be pickled to ddp_spawn workers.
        if self.num_samples < trainer.world_size:
            raise UserError(
                f"callbacks.measure.num_samples={self.num_samples} is below the world size {trainer.world_size}; "
                "every process needs at least one sample"
            )
        self.suite = MetricSuite(self.plan, self.train, self.num_samples).to(trainer.strategy.root_device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.measure(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Closed-form families (and finished runs resumed) skip the training loop and its end hook.
        if self._last_step is None:
            self.measure(trainer, pl_module)

    @torch.no_grad()
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Sample, compute the metrics (all ranks) and log them (rank 0); returns the values."""
        assert self.suite is not None and isinstance(pl_module, DiffusionModule)
        rank, world = trainer.global_rank, trainer.world_size
        first, last = rank * self.num_samples // world, (rank + 1) * self.num_samples // world
        seeds = sample_seeds(self.seed, self.num_samples)
        self.suite.reset()
        self.suite.prepare(progress=rank == 0)
        shown: list[Tensor] = []
        averaged = ema_weights(self.ema, pl_module)
        starts = range(first, last, self.batch_size)
        bar = with_progress(starts, desc="measure: sampling + metrics", delay=PROGRESS_DELAY_S, disable=rank != 0)
        with averaged:
            for start in bar:
                stop = min(start + self.batch_size, last)
                samples = draw_samples(
                    pl_module.denoiser, pl_module.grid, self.data_shape, seeds[start:stop], sampler=self.sampler,
                    batch_size=self.batch_size, is_image=self.is_image, device=pl_module.device,
                )
                self.suite.update(samples, index=torch.arange(start, stop))
                if sum(s.shape[0] for s in shown) < self.grid_size:
                    shown.append(samples)
        values = self.suite.compute()
        neighbours = self.suite.neighbours()
        self._last_step = trainer.global_step
        self.history.append(values)
        if rank == 0:
            shown_samples = torch.cat(shown)[: self.grid_size] if shown else None
            self._log(trainer, values, neighbours, shown_samples, seeds)
        return values

    def _log(
        self,
        trainer: L.Trainer,
        values: dict[str, float],
        neighbours: NearestNeighbours | None,
        shown: Tensor | None,
        seeds: list[int],
    ) -> None:
        step = trainer.global_step
        scalars = {PREFIX + key: value for key, value in values.items()}
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                logger.log_metrics(scalars, step=step)
                continue
            import wandb

            payload: dict[str, Any] = dict(scalars)
            if shown is not None and self.is_image and shown.shape[0] > 0:
                caption = f"step {step}: the first {shown.shape[0]} of {self.num_samples} samples"
                payload[PREFIX + "samples"] = wandb.Image(sample_grid(shown), caption=caption)
                if neighbours is not None:
                    count = shown.shape[0]
                    nearest = self.train[neighbours.nearest[:count, 0]]
                    picture = nearest_grid(shown, nearest, neighbours.d1[:count])
                    payload[PREFIX + "nearest"] = wandb.Image(
                        picture, caption=f"step {step}: sample | nearest training image, d1 = L2 / sqrt(d)"
                    )
            if neighbours is not None:
                payload[PREFIX + "d1_histogram"] = wandb.Histogram(neighbours.d1.numpy())
                payload[PREFIX + "per_sample"] = wandb.Table(columns=TABLE_COLUMNS, data=self._rows(neighbours, seeds))
            logger.log_metrics(payload, step=step)

    def _rows(self, neighbours: NearestNeighbours, seeds: list[int]) -> list[list[Any]]:
        assert self.suite is not None
        ratio = self.suite.metrics["memorization"].ratio
        rows = []
        for i, d1, d2, near in zip(
            neighbours.index.tolist(), neighbours.d1.tolist(), neighbours.d2.tolist(), neighbours.nearest.tolist()
        ):
            rows.append([i, seeds[i], d1, d2, d1 / d2 if d2 > 0 else float("inf"), d1 < ratio * d2, near[0], near[1]])
        return rows


def measure_for_run(
    run: RunContext, *, enabled: bool, every_n_steps: int, num_samples: int, batch_size: int, grid_size: int
) -> Measure | None:
    """The measurement of a run (``callbacks.measure``: when and how many samples; the top-level
    ``metrics`` node: what is measured), or None when off."""
    if not enabled:
        return None
    settings = {
        "every_n_steps": every_n_steps, "num_samples": num_samples, "batch_size": batch_size, "grid_size": grid_size
    }
    is_image = bool(run.datamodule.is_image)
    ema = run.built.get("ema")
    return Measure(
        train=run.datamodule.train_data,
        is_image=is_image,
        settings=settings,
        # Planned now, so a bad weights file or setting stops the run before training.
        plan=plan_measurement(plain(run.cfg.metrics), run.datamodule, is_image),
        sampler=build(run.cfg.sampler, "sampler"),
        seed=int(run.cfg.sample_seed),
        ema=ema if isinstance(ema, EMA) else None,
    )
