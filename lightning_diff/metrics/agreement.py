"""Two-model agreement (Kadkhodaie et al. 2024): do two models trained on disjoint halves of
the data generate the same image from the same noise?

Models that memorize their own half generate different images (each copies its half); models
that generalize generate nearly the same one. For samples a_i and b_i drawn from the same seed
by the two models, the agreement is the cosine similarity of (a_i - m) and (b_i - m), where m
is ``mean`` (e.g. the training mean) or, by default, the mean of all samples of both models;
removing it keeps the shared average image from inflating the similarity.
"""

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_diff.errors import UserError


class TwoModelAgreement(Metric):
    """Mean (and median) cosine similarity of mean-removed sample pairs from the same seeds."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, mean: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fixed_mean = None if mean is None else mean.detach().reshape(-1).double()
        self.add_state("a", default=[], dist_reduce_fx="cat")
        self.add_state("b", default=[], dist_reduce_fx="cat")

    def update(self, samples_a: Tensor, samples_b: Tensor) -> None:
        """Add pairs: row i of both comes from the same seed."""
        if samples_a.shape != samples_b.shape:
            raise UserError(
                f"the two models' samples differ in shape ({tuple(samples_a.shape)} vs {tuple(samples_b.shape)}); "
                "draw the same number of samples from the same seeds for data of the same shape"
            )
        self.a.append(samples_a.detach().reshape(samples_a.shape[0], -1).double())
        self.b.append(samples_b.detach().reshape(samples_b.shape[0], -1).double())

    def _cosines(self) -> Tensor:
        if (isinstance(self.a, list) and not self.a) or dim_zero_cat(self.a).shape[0] == 0:
            raise UserError("two-model agreement has no sample pairs; give it samples from both models")
        a, b = dim_zero_cat(self.a).cpu(), dim_zero_cat(self.b).cpu()
        mean = self.fixed_mean if self.fixed_mean is not None else torch.cat([a, b]).mean(dim=0)
        if mean.numel() != a.shape[1]:
            raise UserError(f"the agreement mean has {mean.numel()} values, the samples {a.shape[1]} per sample")
        return torch.nn.functional.cosine_similarity(a - mean, b - mean, dim=1, eps=1e-12)

    def compute(self) -> dict[str, Tensor]:
        cosines = self._cosines()
        # numpy's median (the mean of the middle two), as every other median of per-sample values here
        return {"agreement_cosine_mean": cosines.mean(), "agreement_cosine_median": cosines.quantile(0.5)}

    def per_sample(self) -> Tensor:
        """Each pair's cosine (float64, CPU), in order of arrival: what the mean and median
        summarise, and what an interval over samples resamples.

        Under DDP this is a collective (every rank's pairs, rank by rank): call it on every rank.
        """
        with self.sync_context(should_unsync=True):
            return self._cosines()
