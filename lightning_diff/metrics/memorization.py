"""Memorization: does each generated sample copy a training image?

For every sample, its two nearest training images in pixel L2 / sqrt(d) (exact, by chunked
matrix products: :func:`lightning_diff.metrics.nearest.nearest_two`). A sample is memorized
when d1 / d2 < 1/3 (Gu et al. 2023; Yoon et al. 2023): it is much closer to one training
image than to any other. The memorized fraction comes with its exact (Clopper–Pearson) 95%
interval, ``memorized_fraction_low`` and ``memorized_fraction_high``: the upper end is what
"memorized 0 of n" still allows. Per-sample results are list states concatenated across
processes, so under DDP every rank sees all samples, ordered by their global index.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_diff.errors import UserError
from lightning_diff.metrics.intervals import clopper_pearson
from lightning_diff.metrics.nearest import COPY_RATIO, nearest_two

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class NearestNeighbours:
    """Per-sample results, ordered by sample index (all on the CPU)."""

    index: Tensor  # (M,) global sample index
    d1: Tensor  # (M,) distance to the nearest training image
    d2: Tensor  # (M,) distance to the second nearest
    nearest: Tensor  # (M, 2) training-set indices of the nearest and second nearest

    @property
    def ratio(self) -> Tensor:
        return self.d1 / self.d2.clamp_min(torch.finfo(self.d2.dtype).tiny)


def quantile_key(q: float) -> str:
    """``d1_median`` for 0.5, else ``d1_q05``-style names."""
    return "d1_median" if q == 0.5 else f"d1_q{round(q * 100):02d}"


class Memorization(Metric):
    """Memorized fraction, d1 quantiles and nearest training images of generated samples.

    Args:
        train: the training set (N, *data_shape), N >= 2; moves with the metric's device.
        ratio: a sample is memorized when d1 / d2 < ratio.
        quantiles: the d1 quantiles reported (0.5 is reported as ``d1_median``).
        sample_chunk, train_chunk: block sizes of the search (memory ~ sample_chunk * train_chunk;
            default: chosen for the device).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        train: Tensor,
        ratio: float = COPY_RATIO,
        quantiles: tuple[float, ...] = QUANTILES,
        sample_chunk: int | None = None,
        train_chunk: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if train.dim() < 2 or train.shape[0] < 2:
            count = train.shape[0] if train.dim() else 0
            raise UserError(
                f"memorization needs at least two training images to tell a copy from a near miss (d1/d2), got "
                f"{count}; use a training set with data.num_train >= 2"
            )
        if not 0 < ratio <= 1:
            raise UserError(f"memorization ratio={ratio} is not valid; use a value in (0, 1] (the standard is 1/3)")
        self.ratio = ratio
        self.quantiles = tuple(quantiles)
        self.sample_chunk = sample_chunk
        self.train_chunk = train_chunk
        self.register_buffer("train_data", train.detach().float().contiguous(), persistent=False)
        self._seen = 0
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("d1", default=[], dist_reduce_fx="cat")
        self.add_state("d2", default=[], dist_reduce_fx="cat")
        self.add_state("nearest", default=[], dist_reduce_fx="cat")

    def update(self, samples: Tensor, index: Tensor | None = None) -> None:
        """Add ``samples`` (B, *data_shape); ``index`` gives their global sample numbers
        (default: in order of arrival in this process)."""
        distances, nearest = nearest_two(samples, self.train_data, self.sample_chunk, self.train_chunk)
        if index is None:
            index = torch.arange(self._seen, self._seen + samples.shape[0])
        self._seen += samples.shape[0]
        self.index.append(index.to(self.train_data.device, torch.long))
        self.d1.append(distances[:, 0])
        self.d2.append(distances[:, 1])
        self.nearest.append(nearest)

    def reset(self) -> None:
        super().reset()
        self._seen = 0

    def _gathered(self) -> NearestNeighbours:
        # A list state is a list of tensors before the sync and one tensor after it.
        if (isinstance(self.d1, list) and not self.d1) or dim_zero_cat(self.d1).numel() == 0:
            raise UserError("memorization has no samples to summarise; give it at least one sample")
        index = dim_zero_cat(self.index)
        order = index.argsort()
        return NearestNeighbours(
            index=index[order].cpu(),
            d1=dim_zero_cat(self.d1)[order].cpu(),
            d2=dim_zero_cat(self.d2)[order].cpu(),
            nearest=dim_zero_cat(self.nearest)[order].cpu(),
        )

    def compute(self) -> dict[str, Tensor]:
        """``memorized_fraction`` with its exact 95% bounds (``memorized_fraction_low``, ``_high``),
        ``d1_mean``, the d1 quantiles and ``num_samples``."""
        result = self._gathered()
        d1 = result.d1.double()
        memorized = result.d1 < self.ratio * result.d2
        bounds = clopper_pearson(int(memorized.sum()), memorized.numel())
        summary = {
            "memorized_fraction": memorized.double().mean(),
            "memorized_fraction_low": torch.tensor(bounds.low, dtype=torch.float64),
            "memorized_fraction_high": torch.tensor(bounds.high, dtype=torch.float64),
            "d1_mean": d1.mean(),
            "num_samples": torch.tensor(float(d1.numel()), dtype=torch.float64),
        }
        levels = torch.quantile(d1, torch.tensor(self.quantiles, dtype=torch.float64))
        for q, value in zip(self.quantiles, levels):
            summary[quantile_key(q)] = value
        return summary

    def per_sample(self) -> NearestNeighbours:
        """Every sample's distances and nearest training images, over all processes.

        Under DDP this is a collective: call it on every rank.
        """
        with self.sync_context(should_unsync=True):
            return self._gathered()
