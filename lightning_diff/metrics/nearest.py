"""Exact nearest training neighbours by chunked matrix products.

Distances are pixel L2 divided by sqrt(d). ||s - x||^2 = ||s||^2 - 2 s.x + ||x||^2 is
evaluated for one block of samples against one block of training images at a time, keeping
the running two smallest, so memory stays O(block^2) whatever the sizes.
A sample copies a training image when d1 / d2 < 1/3 (Gu et al. 2023; Yoon et al. 2023).
"""

import math

import torch
from torch import Tensor

from lightning_diff.errors import UserError

COPY_RATIO = 1.0 / 3.0


def nearest_two(
    samples: Tensor, train: Tensor, sample_chunk: int = 1024, train_chunk: int = 8192
) -> tuple[Tensor, Tensor]:
    """Distances (M, 2) to and indices (M, 2) of each sample's two nearest training images."""
    if train.shape[0] < 2:
        raise UserError(f"nearest-neighbour search needs at least two training images, got {train.shape[0]}")
    if samples.shape[1:] != train.shape[1:]:
        raise UserError(
            f"samples of shape {tuple(samples.shape[1:])} cannot be compared with training data of shape "
            f"{tuple(train.shape[1:])}; sample from a model trained on this data"
        )
    if samples.shape[0] == 0:
        raise UserError("there are no samples to compare (the sample set is empty)")
    # float64 keeps the expanded square exact enough to rank neighbours as a direct difference
    # would; the training set is converted one chunk at a time, never as a whole copy.
    s = samples.reshape(samples.shape[0], -1).to(train.device, torch.float64)
    x = train.reshape(train.shape[0], -1)
    dim = s.shape[1]
    device = x.device
    best_d = torch.empty(s.shape[0], 2, dtype=torch.float64, device=device)
    best_i = torch.empty(s.shape[0], 2, dtype=torch.long, device=device)
    for start in range(0, s.shape[0], sample_chunk):
        block = s[start : start + sample_chunk]
        block_sq = block.pow(2).sum(dim=1, keepdim=True)
        run_d = torch.full((block.shape[0], 2), math.inf, dtype=torch.float64, device=device)
        run_i = torch.zeros((block.shape[0], 2), dtype=torch.long, device=device)
        for t_start in range(0, x.shape[0], train_chunk):
            xb = x[t_start : t_start + train_chunk].to(torch.float64)
            sq = (block_sq - 2.0 * block @ xb.T + xb.pow(2).sum(dim=1)).clamp_min(0)
            k = min(2, xb.shape[0])
            d, i = sq.topk(k, dim=1, largest=False)
            cand_d = torch.cat([run_d, d], dim=1)
            cand_i = torch.cat([run_i, i + t_start], dim=1)
            order = cand_d.argsort(dim=1)[:, :2]
            run_d = cand_d.gather(1, order)
            run_i = cand_i.gather(1, order)
        best_d[start : start + block.shape[0]] = run_d
        best_i[start : start + block.shape[0]] = run_i
    return (best_d / dim).sqrt().float(), best_i


def copy_fraction(samples: Tensor, train: Tensor) -> float:
    """Fraction of samples whose nearest/second-nearest training distance ratio is below 1/3."""
    d, _ = nearest_two(samples, train)
    return float((d[:, 0] < COPY_RATIO * d[:, 1]).float().mean())
