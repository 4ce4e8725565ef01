"""Exponential moving average of the weights, through Lightning's ``WeightAveraging``.

Differences from ``EMAWeightAveraging``: the decay warms up as min(decay, (1 + n) / (10 + n))
so short runs are not dominated by the initial weights, and the raw weights stay in the model
after training (checkpoints then hold both: ``state_dict`` = EMA, ``current_model_state`` =
raw), so a run resumed from its final checkpoint continues exactly. :meth:`averaged` swaps
the EMA weights in for sampling.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor


class WarmupEMA:
    """avg_fn for ``AveragedModel``: EMA with decay min(decay, (1 + n) / (10 + n))."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        n = float(num_averaged)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        return averaged + (current - averaged) * (1.0 - decay)


class EMA(WeightAveraging):
    """EMA of all parameters and buffers, updated after every optimizer step."""

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__(use_buffers=True, avg_fn=WarmupEMA(decay))
        self.decay = decay

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
