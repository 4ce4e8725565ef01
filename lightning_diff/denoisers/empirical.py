"""The Bayes-optimal denoiser of the training set: the memorizer.

For the empirical distribution of x_1..x_N and y = a x0 + sqrt(t) eps with a = sqrt(1 - t),
E[x0 | y] = sum_i w_i x_i with w = softmax_i(-||y - a x_i||^2 / (2t)). The ||y||^2 term is the
same for every i and drops out of the softmax, leaving logits (a y.x_i - a^2 ||x_i||^2 / 2) / t,
evaluated in chunks of the training set with a running log-sum-exp, so memory is
O(batch x chunk) whatever N is.
"""

import torch
from torch import Tensor

from lightning_diff.denoisers.closed_form import ClosedFormDenoiser
from lightning_diff.denoisers.contract import check_choice
from lightning_diff.denoisers.registry import family
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError


class EmpiricalDenoiser(ClosedFormDenoiser):
    """Posterior mean under the empirical training distribution, for any t (at each grid level it
    is that level's optimum, so it counts as per_level)."""

    accepts_any_t = True

    def __init__(self, data_shape: tuple[int, ...], chunk_size: int = 4096) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.chunk_size = chunk_size
        dim = int(torch.tensor(self.data_shape).prod())
        self.register_buffer("data", torch.zeros(0, dim))
        self.register_buffer("half_sq_norms", torch.zeros(0))

    def _fit(self, x0: Tensor) -> None:
        flat = x0.reshape(x0.shape[0], -1).float()
        self.data = flat.to(self.data.device)
        self.half_sq_norms = 0.5 * flat.pow(2).sum(dim=1).to(self.data.device)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        if self.data.shape[0] == 0:
            raise UserError("the empirical denoiser has no training data: fit it (denoiser.fit=closed_form) first")
        flat = y.reshape(y.shape[0], -1).float()
        t = t.float().reshape(-1, 1)
        a = torch.sqrt(1.0 - t)
        running_max = torch.full_like(t, -torch.inf)
        total = torch.zeros_like(t)
        acc = torch.zeros_like(flat)
        for start in range(0, self.data.shape[0], self.chunk_size):
            chunk = self.data[start : start + self.chunk_size]
            logits = (a * (flat @ chunk.T) - a.pow(2) * self.half_sq_norms[start : start + self.chunk_size]) / t
            new_max = torch.maximum(running_max, logits.max(dim=1, keepdim=True).values)
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(logits - new_max)
            total = total * rescale + weights.sum(dim=1, keepdim=True)
            acc = acc * rescale + weights @ chunk
            running_max = new_max
        return (acc / total).reshape(y.shape).to(y.dtype)


@family("empirical")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "closed_form",
    conditioning: str = "per_level",
    chunk_size: int = 4096,
) -> EmpiricalDenoiser:
    """The empirical family has no trainable form: it is always fitted in closed form."""
    if fit != "closed_form":
        raise UserError(f"denoiser.fit={fit!r} is not available for empirical; it is fitted in closed form only")
    check_choice("conditioning", conditioning, ("per_level",), "empirical (the optimum at every level)")
    return EmpiricalDenoiser(data_shape, chunk_size)
