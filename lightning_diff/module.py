"""DiffusionModule: a denoiser plus the shared objective, and nothing family-specific."""

import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_diff.denoisers.contract import Denoiser
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.objective import DiffusionObjective
from lightning_diff.errors import NonFiniteLossError, UserError
from lightning_diff.run.checkpoint import CONFIG_KEY

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# The per-level validation losses at every validation, kept in checkpoints so a resumed run keeps its curve.
VAL_HISTORY_KEY = "lightning_diff_val_history"


class WarmupCosine:
    """Learning-rate multiplier: linear warm-up, then constant or cosine decay to ``floor``."""

    def __init__(self, warmup_steps: int, total_steps: int, decay: str, floor: float) -> None:
        if decay not in ("constant", "cosine"):
            raise UserError(f"optimizer schedule {decay!r} is not valid; choose constant or cosine")
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)
        self.decay = decay
        self.floor = floor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


class DiffusionModule(L.LightningModule):
    """Trains (or fits) ``denoiser`` with ``objective``; logs a per-level validation loss.

    Args:
        denoiser: any family's :class:`~lightning_diff.denoisers.contract.Denoiser`.
        objective: the shared diffusion objective (grid, level sampling, weighting).
        optimizer: factory called with the parameters (a Hydra ``_partial_`` optimizer).
        seed: seeds every step's levels and noise (with the step index).
        run_info: plain data stored in every checkpoint (config, data shape, grid), so a
            checkpoint can be rebuilt without unpickling code.
        closed_form_val_images: a closed-form family validates on this many of the validation
            images (None: all). Its exact posterior costs as much per image and level as a
            sampling step, so all 500 would cost many times its fit and sampling.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        objective: DiffusionObjective,
        optimizer: OptimizerFactory | None = None,
        schedule: WarmupCosine | None = None,
        seed: int = 0,
        run_info: dict[str, Any] | None = None,
        closed_form_val_images: int | None = None,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.objective = objective
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.seed = seed
        self.run_info = run_info or {}
        self.closed_form_val_images = closed_form_val_images
        self._unchecked_losses: list[Tensor] = []
        self.val_history: list[dict[str, Any]] = []
        # Listed once per fit: walking a per-level UNet's module tree every step costs milliseconds.
        self._trained: list[nn.Parameter] | None = None

    @property
    def grid(self) -> NoiseGrid:
        return self.objective.grid

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return self.denoiser(y, t)

    def setup(self, stage: str) -> None:
        if self.denoiser.needs_fitting:
            datamodule = self.trainer.datamodule
            device = self.trainer.strategy.root_device
            self.denoiser.to(device)
            self.denoiser.fit_data(datamodule.train_data.to(device))

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.objective.loss(
            self.denoiser, batch, self.seed, self.global_step, self.global_rank, self.trainer.world_size
        )
        # Ranks hold equal slices, so the mean over ranks is the global batch's loss: logged as a
        # single process would log it, and checked on every rank, so all stop together. Both
        # happen in on_before_optimizer_step, still before the update.
        self._unchecked_losses.append(self.trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean"))
        return loss

    def on_train_start(self) -> None:
        self._trained = None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # One device-to-host copy per step carries the losses and every gradient's norm: a sync per
        # check, or per parameter, would stall a GPU that otherwise runs ahead of this loop. An inf
        # or NaN element makes its gradient's norm non-finite.
        losses, self._unchecked_losses = self._unchecked_losses, []
        if self._trained is None:
            self._trained = list(self.parameters())
        grads = [p.grad for p in self._trained if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        if not losses and not norms:
            return
        pieces = [torch.stack(losses).float()] if losses else []
        if norms:
            same_dtype = len({norm.dtype for norm in norms}) == 1
            pieces.append(torch.stack(norms if same_dtype else [norm.float() for norm in norms]).float())
        host = torch.cat(pieces).cpu()
        for value in host[: len(losses)].tolist():
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"training loss became {value} at step {self.global_step}; stopped before the update, "
                    "so the last checkpoint holds the last good weights. Lower optimizer.lr or check the data scale."
                )
        if not bool(torch.isfinite(host[len(losses) :]).all()):
            # A huge finite gradient can overflow its norm: name the parameter only if an element is non-finite.
            for name, param in self.named_parameters():
                if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
                    raise NonFiniteLossError(
                        f"the gradient of {name} became NaN or infinite at step {self.global_step}; stopped before "
                        "the update, so the last checkpoint holds the last good weights. Lower optimizer.lr."
                    )
        if losses and self._loss_is_read_this_step():
            # Logged from the host copy, so the progress bar's .item() needs no second sync.
            self.log("train/loss", host[len(losses) - 1], prog_bar=True)

    def _loss_is_read_this_step(self) -> bool:
        """A progress bar shows the loss every step; loggers write it every log_every_n_steps
        (Lightning's rule). On other steps self.log, about a millisecond of Python, is skipped."""
        trainer = self.trainer
        if trainer.progress_bar_callback is not None:
            return True
        every = trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        closed_form = self.denoiser.fit != "sgd"
        if closed_form and self.closed_form_val_images is not None:
            batch = batch[: self.closed_form_val_images]  # the validation images are a seeded draw: a subset is too
        losses = self.objective.per_level_loss(self.denoiser, batch, self.seed, progress=closed_form)
        for k, value in enumerate(losses.tolist()):
            self.log(f"val/loss_level_{k}", value, sync_dist=True)
        self.log("val/loss", float(losses.mean()), prog_bar=True, sync_dist=True)
        # The curve the convergence check reads (run.json val_history); the validation after
        # training repeats the last step's, which replaces it rather than adding a point.
        self.val_history = [entry for entry in self.val_history if entry["step"] != self.global_step]
        self.val_history.append({"step": int(self.global_step), "val_loss_per_level": losses.tolist()})

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        if self.optimizer_factory is None:
            raise UserError("this denoiser has trainable parameters but no optimizer was configured")
        optimizer = self.optimizer_factory(params)
        if self.schedule is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.run_info
        checkpoint[VAL_HISTORY_KEY] = self.val_history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get(VAL_HISTORY_KEY, []))

    def num_parameters(self) -> int:
        """The numbers that define the denoiser (see :meth:`Denoiser.num_parameters`)."""
        return self.denoiser.num_parameters()
