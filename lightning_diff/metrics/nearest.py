"""Exact nearest training neighbours by chunked matrix products.

Distances are pixel L2 divided by sqrt(d). A sample copies a training image when d1 / d2 < 1/3
(Gu et al. 2023; Yoon et al. 2023).

The search runs at float32 speed and returns what float64 gives:

1. for one block of samples against one block of training images at a time, one float32
   matrix product gives ||x||^2 - 2 s.x (||s||^2 is the same for every x, so it cannot change
   the ranking) and each sample keeps its ``CANDIDATES`` smallest values, so memory beyond the
   inputs stays O(block^2) whatever the sizes;
2. the candidates are re-ranked by their float64 distance ||s - x||^2, ties by lower index;
3. rounding bound check: float32 can misjudge ||x||^2 - 2 s.x by at most ``E`` (a bound of
   the accumulated rounding from the largest ||x||, ||s|| and d), so if the largest kept value
   minus E still exceeds the float64 second-best, no image left out can be nearer. A sample that
   fails the check (more than ``CANDIDATES`` images within 2E of its second-nearest) is searched
   again the same way in float64.

On a CPU with many large images, :mod:`lightning_diff.metrics.projected_bound` first prunes
the training set per sample with a cheaper lower bound and answers most rows itself, with the
same float64 answer; the rows it cannot prune come here.
"""

import functools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from lightning_diff.errors import UserError
from lightning_diff.metrics.projected_bound import pruned_nearest_two, worth_pruning

COPY_RATIO = 1.0 / 3.0
CANDIDATES = 8


@contextmanager
def _exact_float32_matmul() -> Iterator[None]:
    """The rounding bound assumes IEEE float32 products, not TF32 or bf16 passes."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _torch_product(a: Tensor, b: Tensor) -> Tensor:
    return torch.mm(a, b.T)


def _numpy_product(a: Tensor, b: Tensor) -> Tensor:
    return torch.from_numpy(np.matmul(a.numpy(), b.numpy().T))


@functools.cache
def _cpu_product(dtype: torch.dtype) -> Callable[[Tensor, Tensor], Tensor]:
    """``a @ b.T`` through whichever BLAS is faster on this CPU, torch's or numpy's.

    On an AMD EPYC torch's MKL sgemm ran at 2/3 of numpy's OpenBLAS (the BLAS faiss uses). Both
    are IEEE products, so the search's results do not depend on the choice, only its speed.
    Timed in alternation (median of 5), so a busy moment on a shared machine does not decide.
    """
    a, b = torch.rand(512, 800, dtype=dtype), torch.rand(2048, 800, dtype=dtype)
    times: dict[Callable[[Tensor, Tensor], Tensor], list[float]] = {_torch_product: [], _numpy_product: []}
    for product in times:
        product(a, b)
    for _ in range(5):
        for product, spent in times.items():
            start = time.perf_counter()
            product(a, b)
            spent.append(time.perf_counter() - start)
    return min(times, key=lambda product: sorted(times[product])[2])


def _product(a: Tensor, b: Tensor) -> Tensor:
    return _cpu_product(a.dtype)(a, b) if a.device.type == "cpu" else torch.mm(a, b.T)


def _rounding_bound(dtype: torch.dtype, dim: int, sample_norms: Tensor, max_train_norm: float) -> Tensor:
    """Per sample, twice a bound on |computed - exact| of ||x||^2 - 2 s.x over all x.

    Sums of n products in precision u err by at most gamma_n = n u / (1 - n u) times the sum of
    the terms' magnitudes (||x||^2 for the norm, ||s|| ||x|| for the dot product by
    Cauchy-Schwarz); the final addition adds u. Doubled as a margin.
    """
    u = torch.finfo(dtype).eps / 2
    gamma = (dim + 2) * u / (1 - (dim + 2) * u)
    return 2 * gamma * (max_train_norm**2 + 2 * sample_norms * max_train_norm)


def _augmented(rows: Tensor, last: Tensor | float, dtype: torch.dtype, width: int) -> Tensor:
    """``[rows, last, 0...]`` in ``dtype``, ``width`` columns (a multiple of 16 runs faster)."""
    out = torch.zeros(rows.shape[0], width, dtype=dtype, device=rows.device)
    out[:, : rows.shape[1]] = rows
    out[:, rows.shape[1]] = last
    return out


def _candidates(
    s: Tensor, x: Tensor, k: int, dtype: torch.dtype, sample_chunk: int, train_chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample, the k smallest ||x||^2 - 2 s.x computed in ``dtype``: (values, indices), each
    (M, k); and the largest computed ||x||^2.

    One product gives the whole expression: samples are extended to [-2 s, 1] and training
    images to [x, ||x||^2], so no separate pass adds the norms.
    """
    width = -(-(s.shape[1] + 1) // 16) * 16
    # Scaling by -2 is exact, so the product rounds as s.x would.
    samples = _augmented(-2.0 * s.to(dtype), 1.0, dtype, width)
    values = torch.full((s.shape[0], k), math.inf, dtype=dtype, device=s.device)
    indices = torch.zeros((s.shape[0], k), dtype=torch.long, device=s.device)
    largest_sq = torch.zeros((), dtype=dtype, device=s.device)
    for t_start in range(0, x.shape[0], train_chunk):
        xb = x[t_start : t_start + train_chunk].to(dtype)  # converted a chunk at a time, never whole
        sq_norms = torch.linalg.vecdot(xb, xb)
        largest_sq = torch.maximum(largest_sq, sq_norms.max())
        train = _augmented(xb, sq_norms, dtype, width)
        kb = min(k, xb.shape[0])
        for start in range(0, s.shape[0], sample_chunk):
            rows: slice | Tensor = slice(start, start + sample_chunk)
            partial = _product(samples[rows], train)
            if partial.device.type == "cpu":
                # Once a few chunks are in, most samples have nothing nearer than their k-th
                # candidate in the next chunk: a row minimum (10x cheaper than topk) finds the
                # rows that do. (On a GPU the host would wait for this; topk is cheap there.)
                hit = (partial.amin(dim=1) < values[rows].amax(dim=1)).nonzero(as_tuple=True)[0]
                if 2 * hit.numel() < partial.shape[0]:  # else copying the rows out costs more than it saves
                    rows, partial = hit + start, partial[hit]
            v, i = partial.topk(kb, dim=1, largest=False, sorted=False)
            merged, pick = torch.cat([values[rows], v], dim=1).topk(k, dim=1, largest=False, sorted=False)
            indices[rows] = torch.cat([indices[rows], i + t_start], dim=1).gather(1, pick)
            values[rows] = merged
    return values, indices, largest_sq


def _search(
    s: Tensor, x: Tensor, dtype: torch.dtype, sample_chunk: int, train_chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(float64 squared distances (M, 2), indices (M, 2), whether each row passed the bound check)."""
    k = min(CANDIDATES, x.shape[0])
    with _exact_float32_matmul():
        approx, cand, largest_sq = _candidates(s, x, k, dtype, sample_chunk, train_chunk)
    s64 = s.to(torch.float64)
    exact = torch.empty(cand.shape, dtype=torch.float64, device=s.device)
    for start in range(0, s.shape[0], sample_chunk):
        rows = slice(start, start + sample_chunk)
        diff = x[cand[rows]].to(torch.float64) - s64[rows, None, :]
        exact[rows] = torch.linalg.vecdot(diff, diff)
    # Ties by lower index: order candidates by index, then stably by distance.
    by_index = cand.argsort(dim=1)
    cand, exact = cand.gather(1, by_index), exact.gather(1, by_index)
    order = exact.argsort(dim=1, stable=True)[:, :2]
    best_d, best_i = exact.gather(1, order), cand.gather(1, order)
    if k == x.shape[0]:
        return best_d, best_i, torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    s_sq = s64.pow(2).sum(dim=1)
    # A computed ||x||^2 is at least (1 - gamma_d) of the true one: this bounds the largest norm from above.
    max_norm = (float(largest_sq) * (1 + 2 * s.shape[1] * torch.finfo(dtype).eps)) ** 0.5
    bound = _rounding_bound(dtype, s.shape[1], s_sq.sqrt(), max_norm)
    certified = approx.to(torch.float64).max(dim=1).values - bound > best_d[:, 1] - s_sq
    return best_d, best_i, certified


# (sample, training) block sizes: on a CPU a 1024-image training block stays in cache (faster
# than 4096 or 16384); a GPU needs blocks large enough that kernel launches do not dominate.
CPU_CHUNKS = (2048, 1024)
GPU_CHUNKS = (8192, 8192)


def _full_search(s: Tensor, x: Tensor, sample_chunk: int, train_chunk: int) -> tuple[Tensor, Tensor]:
    """Float64 squared distances and indices (M, 2) from the float32 search over every image."""
    best_d, best_i, certified = _search(s, x, torch.float32, sample_chunk, train_chunk)
    retry = (~certified).nonzero(as_tuple=True)[0]
    if retry.numel():
        # float64's bound is ~1e-9 of float32's: only exact ties beyond CANDIDATES images remain,
        # and any of those tied images is a right answer.
        best_d[retry], best_i[retry], _ = _search(s[retry], x, torch.float64, sample_chunk, train_chunk)
    return best_d, best_i


def nearest_two(
    samples: Tensor,
    train: Tensor,
    sample_chunk: int | None = None,
    train_chunk: int | None = None,
    prune: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Distances (M, 2) to and indices (M, 2) of each sample's two nearest training images.

    Memory beyond the inputs is about ``sample_chunk * train_chunk`` numbers (default: by device).
    ``prune`` (default: when it pays, on a CPU) first tries the projected-bound search of
    :mod:`lightning_diff.metrics.projected_bound`; it gives the same answer.
    """
    if train.shape[0] < 2:
        raise UserError(f"nearest-neighbour search needs at least two training images, got {train.shape[0]}")
    if samples.shape[1:] != train.shape[1:]:
        raise UserError(
            f"samples of shape {tuple(samples.shape[1:])} cannot be compared with training data of shape "
            f"{tuple(train.shape[1:])}; sample from a model trained on this data"
        )
    if samples.shape[0] == 0:
        raise UserError("there are no samples to compare (the sample set is empty)")
    s = samples.reshape(samples.shape[0], -1).to(train.device)
    x = train.reshape(train.shape[0], -1)
    default_sample, default_train = CPU_CHUNKS if x.device.type == "cpu" else GPU_CHUNKS
    sample_chunk, train_chunk = sample_chunk or default_sample, train_chunk or default_train
    if prune is None:
        prune = worth_pruning(s, x)
    if prune and x.device.type != "cpu":
        raise UserError("the projected-bound search runs on the CPU; pass prune=False (or None) for GPU tensors")
    if prune:
        with _exact_float32_matmul():
            best_d, best_i, answered = pruned_nearest_two(s, x, _product)
        rest = (~answered).nonzero(as_tuple=True)[0]
        if rest.numel():
            best_d[rest], best_i[rest] = _full_search(s[rest], x, sample_chunk, train_chunk)
    else:
        best_d, best_i = _full_search(s, x, sample_chunk, train_chunk)
    return (best_d / s.shape[1]).sqrt().float(), best_i


def copy_fraction(samples: Tensor, train: Tensor) -> float:
    """Fraction of samples whose nearest/second-nearest training distance ratio is below 1/3."""
    d, _ = nearest_two(samples, train)
    return float((d[:, 0] < COPY_RATIO * d[:, 1]).float().mean())
