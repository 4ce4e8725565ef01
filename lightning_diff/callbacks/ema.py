"""Exponential moving average of the weights, through Lightning's ``WeightAveraging``.

Differences from ``EMAWeightAveraging``: the decay warms up as min(decay, (1 + n) / (10 + n))
so short runs are not dominated by the initial weights, and the raw weights stay in the model
after training (checkpoints then hold both: ``state_dict`` = EMA, ``current_model_state`` =
raw), so a run resumed from its final checkpoint continues exactly. :meth:`averaged` swaps
the EMA weights in for sampling.

The update is one multi-tensor operation per step with the update count kept on the host:
``AveragedModel.update_parameters`` would read its device-side counter (a host-device sync)
and call a per-tensor function hundreds of times per step for a per-level UNet.
"""

import itertools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor, nn

from lightning_diff.callbacks.context import RunContext


class WarmupEMA:
    """EMA with decay min(decay, (1 + n) / (10 + n)) after n earlier updates."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def weight(self, n: int) -> float:
        """How far the average moves towards the current weights at update n + 1."""
        return 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))

    def update(self, averaged: list[Tensor], current: list[Tensor], n: int) -> None:
        """Move every averaged tensor ``weight(n)`` of the way to the current one, all at once
        (``torch.lerp``; integer buffers such as batch counts by the same formula, truncated back
        to integers as ``copy_`` does)."""
        weight = self.weight(n)
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        others = [(a, c) for a, c in zip(averaged, current) if not a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        if others:
            target = [a for a, _ in others]
            moved = torch._foreach_mul(torch._foreach_sub([c for _, c in others], target), weight)
            torch._foreach_copy_(target, torch._foreach_add(target, moved))


def _state(module: nn.Module) -> list[Tensor]:
    """Parameters then buffers, detached: what ``AveragedModel(use_buffers=True)`` averages, in its order."""
    return [t.detach() for t in itertools.chain(module.parameters(), module.buffers())]


class EMA(WeightAveraging):
    """EMA of all parameters and buffers, updated after every optimizer step."""

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__(use_buffers=True)
        self.decay = decay
        self.ema = WarmupEMA(decay)
        self._updates: int | None = None  # AveragedModel.n_averaged, mirrored on the host
        # (averaged, current) tensors, listed once per fit: walking a per-level UNet's module tree
        # every step costs more than the update itself.
        self._pairs: tuple[list[Tensor], list[Tensor]] | None = None

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # A resumed run restores n_averaged from its checkpoint before training starts: read it once.
        self._updates = None
        self._pairs = None

    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step <= self._latest_update_step or not self.should_update(step_idx=trainer.global_step - 1):
            return
        model = self._average_model
        assert model is not None
        if self._updates is None:
            self._updates = int(model.n_averaged)
        if self._pairs is None:
            # Detached views share storage with the weights, so they follow every in-place update;
            # the average lives on the module's device (WeightAveraging's default).
            self._pairs = (_state(model.module), _state(pl_module))
        averaged, current = self._pairs
        if self._updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            self.ema.update(averaged, current, self._updates)
        model.n_averaged += 1
        self._updates += 1
        self._latest_update_step = trainer.global_step

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # Keep the raw weights in the model; EMA weights are swapped in where they are used.
        return None

    @contextmanager
    def averaged(self, pl_module: "L.LightningModule") -> Iterator[None]:
        """Within the block the module holds the EMA weights (no-op before training)."""
        if self._average_model is None:
            yield
            return
        self._swap_models(pl_module)
        try:
            yield
        finally:
            self._swap_models(pl_module)


def ema_weights(ema: "EMA | None", pl_module: "L.LightningModule") -> AbstractContextManager[None]:
    """Within the block the module holds its EMA weights, or its current ones without EMA."""
    return ema.averaged(pl_module) if ema is not None else nullcontext()


def ema_for_run(run: RunContext, *, enabled: bool, decay: float) -> EMA | None:
    """The EMA of an SGD-trained denoiser (closed-form families have no steps to average)."""
    return EMA(float(decay)) if enabled and run.trainable else None
