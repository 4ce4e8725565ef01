"""Same-noise agreement of two generators, sample by sample: how well ``b`` predicts a reference ``a``.

For sample i (flattened over pixels p), with a the reference:

- ``r2_i = 1 - sum_p (b_ip - a_ip)^2 / sum_p (a_ip - mean_p a_ip)^2`` (scikit-learn's
  ``r2_score(a_i, b_i)``; for a constant a_i it is 1 when b_i equals it, else 0, as scikit-learn's
  default ``force_finite`` gives);
- ``pearson_r_i``: the Pearson correlation of a_i and b_i over pixels (undefined, NaN, when either
  is constant). Kamb & Ganguli's published evaluation computes this, unsquared, and reports it
  as "r^2"; both are kept so their numbers compare like for like.

Medians skip NaNs. Arithmetic in float64.
"""

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_diff.errors import UserError


def per_sample_sse(reference: Tensor, other: Tensor) -> Tensor:
    """``sum_p (b_ip - a_ip)^2`` of each row pair: the error r^2 divides by the reference's spread."""
    return (other.reshape(other.shape[0], -1).double() - reference.reshape(reference.shape[0], -1).double()).pow(2).sum(dim=1)


def per_sample_r2(reference: Tensor, other: Tensor) -> Tensor:
    """``r2_i`` of each row of ``other`` (N, ...) against the same row of ``reference``."""
    a = reference.reshape(reference.shape[0], -1).double()
    residual = per_sample_sse(reference, other)
    spread = (a - a.mean(dim=1, keepdim=True)).pow(2).sum(dim=1)
    constant = spread == 0
    r2 = 1.0 - residual / torch.where(constant, torch.ones_like(spread), spread)
    return torch.where(constant, (residual == 0).double(), r2)


def per_sample_pearson(reference: Tensor, other: Tensor) -> Tensor:
    """Pearson r over pixels of each row pair; NaN where either row is constant."""
    a = reference.reshape(reference.shape[0], -1).double()
    b = other.reshape(other.shape[0], -1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(dim=1) / norms, torch.full_like(norms, float("nan")))


class SameNoiseR2(Metric):
    """Per-sample r^2 and Pearson r of ``other`` against ``reference``, rows drawn from the same seeds."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("r2", default=[], dist_reduce_fx="cat")
        self.add_state("pearson", default=[], dist_reduce_fx="cat")

    def update(self, reference: Tensor, other: Tensor) -> None:
        if reference.shape != other.shape:
            raise UserError(
                f"same-noise r^2 needs samples of one shape, got {tuple(reference.shape)} and {tuple(other.shape)}"
            )
        self.r2.append(per_sample_r2(reference, other))
        self.pearson.append(per_sample_pearson(reference, other))

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.r2, list) and not self.r2:
            raise UserError("same-noise r^2 has no sample pairs; give it samples of both generators")
        r2, pearson = dim_zero_cat(self.r2), dim_zero_cat(self.pearson)
        return {
            "r2_per_sample": r2,
            "r2_samples_median": r2.quantile(0.5),  # the mean of the middle two, as numpy's median
            "r2_samples_mean": r2.mean(),
            "pearson_r_per_sample": pearson,
            "pearson_r_samples_median": pearson.nanquantile(0.5),
        }


def median_r2(reference: Tensor, other: Tensor) -> float:
    """The median over samples of :func:`per_sample_r2` (numpy's median: the mean of the middle two)."""
    return float(per_sample_r2(reference, other).quantile(0.5))
