"""What the Bayes-optimal (empirical) denoiser generates: training points.

In the continuous limit the sampler reproduces the forward process's marginals exactly, so its
output law is the training distribution itself, uniform over the N training points. On a grid
the output is the last denoiser output, a softmax average sum_i w_i x_i with
w_i proportional to exp(-||y - a x_i||^2 / (2 t_min)); how close that is to one training point
is governed by t_min alone when the last state y is distributed like the forward process at
t_min. docs/theory.md, section "Empirical", derives the bound computed here.
"""

import math

import torch
from torch import Tensor


def copy_failure_bound(train_data: Tensor, t_min: float, chunk: int = 1024) -> float:
    """Upper bound on the probability that a sample does not copy (d1 / d2 >= 1/3).

    Assumes the state at the last level is y = a x_j + sqrt(t_min) e with j uniform and
    e ~ N(0, I) (what an exact sampler delivers). A sample copies x_j whenever every weight
    ratio w_i / w_j stays below c_ij = delta_j / (4 (N - 1) ||x_i - x_j||), delta_j being x_j's
    nearest-neighbour distance, and P(w_i / w_j >= c) = Phi_bar(a D / (2 sqrt(t)) + sqrt(t) ln c / (a D))
    with D = ||x_i - x_j||; the union bound over i, averaged over j, is returned (at most 1).
    """
    flat = train_data.reshape(train_data.shape[0], -1).to(torch.float64)
    count = flat.shape[0]
    if count < 2:
        return 0.0
    a, s = math.sqrt(1.0 - t_min), math.sqrt(t_min)
    total = 0.0
    for start in range(0, count, chunk):
        dist = torch.cdist(flat[start : start + chunk], flat)
        rows = torch.arange(dist.shape[0])
        dist[rows, rows + start] = math.inf  # a point is not its own competitor
        nearest = dist.min(dim=1, keepdim=True).values
        if bool((nearest == 0).any()):
            # Duplicated training points are copied either way; ratios against a twin are undefined.
            dist = torch.where(dist == 0, torch.full_like(dist, math.inf), dist)
            nearest = dist.min(dim=1, keepdim=True).values
        threshold = nearest / (4 * (count - 1) * dist)
        z = a * dist / (2 * s) + s * torch.log(threshold) / (a * dist)
        tail = torch.special.ndtr(-z).nan_to_num(0.0)
        total += float(tail.sum(dim=1).clamp(max=1.0).sum())
    return total / count


def expected_distinct(num_train: int, num_samples: int) -> float:
    """Expected number of distinct training points among ``num_samples`` uniform draws."""
    return num_train * (1.0 - (1.0 - 1.0 / num_train) ** num_samples)

