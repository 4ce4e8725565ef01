"""Distances between generated samples and a reference sample, for synthetic (vector) data.

The reference is the training set, or samples of what theory predicts a family generates
(the "theory gap"). All distances treat samples as flat vectors in R^d:

- ``mean_error``: ||mu_gen - mu_ref||_2;
- ``covariance_error``: ||Sigma_gen - Sigma_ref||_F / ||Sigma_ref||_F (unbiased covariances);
- ``sliced_wasserstein``: SW_2 = sqrt(E_theta W_2^2(theta . gen, theta . ref)) over
  ``num_projections`` directions drawn uniformly on the sphere (seeded); each 1-D W_2^2 is
  the mean squared difference of the two quantile functions on a grid of Q = max(n_gen, n_ref)
  mid-point levels (exact sorted matching when the sizes are equal);
- ``mmd2``: the unbiased estimate of the squared maximum mean discrepancy with the Gaussian
  kernel k(x, y) = exp(-||x - y||^2 / (2 h^2)); h is ``bandwidth``, or the median distance
  between reference points (median heuristic), reported as ``mmd_bandwidth``.

MMD uses at most ``max_reference`` reference points (a seeded subset) to bound its cost.
"""

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_diff.errors import UserError
from lightning_diff.seeding import generator

_PROJECTION_STREAM = 0x51D
_SUBSET_STREAM = 0x33D


def covariance(x: Tensor) -> Tensor:
    """Unbiased covariance of the rows of ``x`` (n, d)."""
    centred = x - x.mean(dim=0)
    return centred.T @ centred / (x.shape[0] - 1)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> Tensor:
    """SW_2 between the rows of ``a`` and ``b`` along unit ``directions`` (d, P)."""
    levels = (torch.arange(max(a.shape[0], b.shape[0]), dtype=a.dtype) + 0.5) / max(a.shape[0], b.shape[0])
    qa = torch.quantile(a @ directions, levels, dim=0)
    qb = torch.quantile(b @ directions, levels, dim=0)
    return (qa - qb).pow(2).mean().sqrt()


def mmd2_unbiased(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    """Unbiased MMD^2 with the Gaussian kernel of ``bandwidth`` h: k = exp(-||x - y||^2 / (2 h^2))."""

    def kernel_mean(x: Tensor, y: Tensor, same: bool) -> Tensor:
        k = torch.exp(-torch.cdist(x, y).pow(2) / (2 * bandwidth**2))
        if same:
            n = x.shape[0]
            return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
        return k.mean()

    return kernel_mean(a, a, True) + kernel_mean(b, b, True) - 2 * kernel_mean(a, b, False)


class DistributionDistance(Metric):
    """Mean and covariance error, sliced Wasserstein-2 and MMD^2 of generated samples to ``reference``.

    Args:
        reference: (N, *shape) reference samples, N >= 2.
        num_projections: directions of the sliced Wasserstein distance.
        bandwidth: Gaussian-kernel bandwidth h of the MMD; None: the median heuristic.
        max_reference: reference points used by the MMD (a seeded subset when there are more).
        seed: seeds the projections and the MMD subset.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        reference: Tensor,
        num_projections: int = 128,
        bandwidth: float | None = None,
        max_reference: int = 2048,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reference.dim() < 2 or reference.shape[0] < 2:
            raise UserError(f"distribution distances need at least two reference samples, got {reference.shape[0]}")
        if num_projections < 1 or max_reference < 2:
            raise UserError(
                f"distribution num_projections={num_projections} must be >= 1 and max_reference={max_reference} >= 2"
            )
        if bandwidth is not None and bandwidth <= 0:
            raise UserError(f"distribution bandwidth={bandwidth} must be > 0, or null for the median heuristic")
        self.data_shape = tuple(reference.shape[1:])
        self.num_projections = num_projections
        self.bandwidth = bandwidth
        self.max_reference = max_reference
        self.seed = seed
        self.register_buffer("reference", reference.detach().reshape(reference.shape[0], -1).double(), persistent=False)
        self.add_state("samples", default=[], dist_reduce_fx="cat")

    def update(self, samples: Tensor) -> None:
        """Add generated samples (B, *shape)."""
        if tuple(samples.shape[1:]) != self.data_shape:
            raise UserError(
                f"samples of shape {tuple(samples.shape[1:])} cannot be compared with reference data of shape "
                f"{self.data_shape}; sample from a model trained on this data"
            )
        self.samples.append(samples.detach().reshape(samples.shape[0], -1).to(self.reference.device, torch.float64))

    def compute(self) -> dict[str, Tensor]:
        empty = isinstance(self.samples, list) and not self.samples  # a list before the sync, a tensor after
        generated = torch.empty(0) if empty else dim_zero_cat(self.samples).cpu()
        if generated.shape[0] < 2:
            raise UserError(f"distribution distances need at least two generated samples, got {generated.shape[0]}")
        reference = self.reference.cpu()
        dim = reference.shape[1]
        ref_cov = covariance(reference)
        directions = torch.randn(
            dim, self.num_projections, generator=generator(self.seed, _PROJECTION_STREAM), dtype=torch.float64
        )
        directions = directions / directions.norm(dim=0, keepdim=True)
        subset = reference
        if reference.shape[0] > self.max_reference:
            order = torch.randperm(reference.shape[0], generator=generator(self.seed, _SUBSET_STREAM))
            subset = reference[order[: self.max_reference]]
        bandwidth = self.bandwidth if self.bandwidth is not None else float(torch.pdist(subset).median())
        if bandwidth <= 0:
            raise UserError(
                "the reference points all coincide, so the MMD median-heuristic bandwidth is 0; set the bandwidth"
            )
        return {
            "mean_error": (generated.mean(dim=0) - reference.mean(dim=0)).norm(),
            "covariance_error": (covariance(generated) - ref_cov).norm() / ref_cov.norm().clamp_min(1e-300),
            "sliced_wasserstein": sliced_wasserstein(generated, reference, directions),
            "mmd2": mmd2_unbiased(generated, subset, bandwidth),
            "mmd_bandwidth": torch.tensor(bandwidth, dtype=torch.float64),
        }
