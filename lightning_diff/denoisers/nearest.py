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

from lightning_diff.denoisers.closed_form import ClosedFormDenoiser
from lightning_diff.denoisers.contract import check_choice
from lightning_diff.denoisers.registry import family
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError


class NearestDenoiser(ClosedFormDenoiser):
    """The training image nearest to y after scaling to the level, for any t."""

    accepts_any_t = True

    def __init__(self, data_shape: tuple[int, ...], chunk_size: int) -> None:
        super().__init__()
        if chunk_size < 1:
            raise UserError(f"denoiser.chunk_size={chunk_size} must be >= 1")
        self.data_shape = tuple(data_shape)
        self.chunk_size = chunk_size
        dim = int(torch.tensor(self.data_shape).prod())
        self.register_buffer("data", torch.zeros(0, dim))
        self.register_buffer("half_sq_norms", torch.zeros(0))

    def _fit(self, x0: Tensor) -> None:
        flat = x0.reshape(x0.shape[0], -1).float()
        self.data = flat.to(self.data.device)
        self.half_sq_norms = 0.5 * flat.pow(2).sum(dim=1).to(self.data.device)

    def nearest_index(self, y: Tensor, t: Tensor) -> Tensor:
        """``i*`` for each row of ``y``: the largest logit a y.x_i - a^2 ||x_i||^2 / 2, lowest index on ties."""
        if self.data.shape[0] == 0:
            raise UserError("the nearest-image denoiser has no training data: fit it (denoiser.fit=closed_form) first")
        flat = y.reshape(y.shape[0], -1).float()
        a = torch.sqrt(1.0 - t.float().reshape(-1, 1))
        best = torch.full((flat.shape[0],), -torch.inf, device=flat.device)
        index = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
        for start in range(0, self.data.shape[0], self.chunk_size):
            chunk = self.data[start : start + self.chunk_size]
            logits = a * (flat @ chunk.T) - a.pow(2) * self.half_sq_norms[start : start + self.chunk_size]
            value, position = logits.max(dim=1)
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
    if fit != "closed_form":
        raise UserError(f"denoiser.fit={fit!r} is not available for nearest; it is fitted in closed form only")
    check_choice("conditioning", conditioning, ("per_level",), "nearest (the same rule at every level)")
    return NearestDenoiser(data_shape, chunk_size)
