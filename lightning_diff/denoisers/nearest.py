"""The nearest training image: a copying baseline.

``D(y, t) = x_{i*}`` with ``i* = argmin_i ||y - sqrt(1 - t) x_i||``: the training image whose
noisy version at level t is closest to y. It is the empirical (Bayes-optimal) denoiser's
t -> 0 limit at every t: the softmax over the same logits ``a y.x_i - a^2 ||x_i||^2 / 2``
replaced by its arg max. Sampling with it copies a training image from the first step on.
Ties go to the lower index; the search is chunked over the training set like the empirical
denoiser's, so memory is O(batch x chunk).
"""

import torch
from torch import Tensor

from lightning_diff.denoisers.contract import check_choice, check_only_fit
from lightning_diff.denoisers.registry import family
from lightning_diff.denoisers.training_set import TrainingSetDenoiser
from lightning_diff.diffusion.grids import NoiseGrid


class NearestDenoiser(TrainingSetDenoiser):
    """The training image nearest to y after scaling to the level, for any t."""

    def nearest_index(self, y: Tensor, t: Tensor) -> Tensor:
        """``i*`` for each row of ``y``: the largest score, the lowest index on ties."""
        flat = y.reshape(y.shape[0], -1).float()
        best = torch.full((flat.shape[0],), -torch.inf, device=flat.device)
        index = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
        for start, _, scores in self.scores(flat, torch.sqrt(1.0 - t.float().reshape(-1, 1))):
            value, position = scores.max(dim=1)
            better = value > best  # strictly: an earlier chunk keeps a tie
            best = torch.where(better, value, best)
            index = torch.where(better, position + start, index)
        return index

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return self.data[self.nearest_index(y, t)].reshape(y.shape).to(y.dtype)


@family("nearest")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "closed_form",
    conditioning: str = "per_level",
    chunk_size: int = 4096,
) -> NearestDenoiser:
    """The copying baseline: no trainable form, fitted in closed form (it stores the training set)."""
    check_only_fit(fit, "closed_form", "nearest")
    check_choice("conditioning", conditioning, ("per_level",), "nearest (the same rule at every level)")
    return NearestDenoiser(data_shape, chunk_size)
