"""The Bayes-optimal denoiser of the training set: the memorizer.

For the empirical distribution of x_1..x_N and y = a x0 + sqrt(t) eps with a = sqrt(1 - t),
E[x0 | y] = sum_i w_i x_i with w = softmax_i(-||y - a x_i||^2 / (2t)). The ||y||^2 term is the
same for every i and drops out of the softmax, leaving logits (a y.x_i - a^2 ||x_i||^2 / 2) / t,
evaluated in chunks of the training set with a running log-sum-exp, so memory is
O(batch x chunk) whatever N is.
"""

import torch
from torch import Tensor

from lightning_diff.denoisers.contract import check_choice, check_only_fit
from lightning_diff.denoisers.registry import family
from lightning_diff.denoisers.training_set import LOG2_E, TrainingSetDenoiser, softmax_step
from lightning_diff.diffusion.grids import NoiseGrid


class EmpiricalDenoiser(TrainingSetDenoiser):
    """Posterior mean under the empirical training distribution, for any t (at each grid level it
    is that level's optimum, so it counts as per_level)."""

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        flat = y.reshape(y.shape[0], -1).float()
        t = t.float().reshape(-1, 1)
        running_max = torch.full_like(t, -torch.inf)
        total = torch.zeros_like(t)
        acc = torch.zeros_like(flat)
        for _, chunk, scores in self.scores(flat, torch.sqrt(1.0 - t)):
            running_max, rescale, weights = softmax_step(running_max, scores * (LOG2_E / t))
            total = total * rescale + weights.sum(dim=1, keepdim=True)
            acc = acc * rescale + weights @ chunk
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
    check_only_fit(fit, "closed_form", "empirical")
    check_choice("conditioning", conditioning, ("per_level",), "empirical (the optimum at every level)")
    return EmpiricalDenoiser(data_shape, chunk_size)
