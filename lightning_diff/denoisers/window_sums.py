"""Sums over centred windows along one axis, O(1) per output whatever the window's size.

The window of half-width h around index j covers j - h .. j + h. With zero padding the
indices outside 0 .. n - 1 add nothing; with circular padding index k stands for k mod n (a
window wider than n counts some entries twice). From the prefix sums S (S[0] = 0,
S[k] = x[0] + ... + x[k - 1], total T = S[n]), the prefix sum of the periodic extension is
F(k) = S[k mod n] + floor(k / n) T, so a circular window sums to F(j + h + 1) - F(j - h) and a
zero-padded one to S[clamp(j + h + 1)] - S[clamp(j - h)]: one addition for the prefix and one
subtraction per output, against the 2h + 1 additions of summing the window directly (55 at
28x28 for the largest patches: the box filter this replaces cost (2h + 1)^2 per pixel).

Along the axis the two indices of consecutive outputs either advance by one or stay (clamped
at an edge), and the wrap count is piecewise constant, so the outputs fall into at most a few
runs, each a single subtraction of two strided views of S: a handful of tensor operations per
axis, however long the axis.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Run:
    """Outputs start .. start + length - 1 read S at ``upper + k * upper_step`` minus S at
    ``lower + k * lower_step`` (k = 0 .. length - 1), plus ``wraps`` totals."""

    start: int
    length: int
    upper: int
    upper_step: int
    lower: int
    lower_step: int
    wraps: int


def window_runs(extent: int, size: int, padding: str) -> list[Run]:
    """The runs that give every window sum along an axis of ``extent`` entries (windows of odd
    ``size``, at most 2 extent - 1, padded as ``padding``)."""
    half = size // 2
    terms = []
    for j in range(extent):
        upper, lower = j + half + 1, j - half
        if padding == "circular":
            terms.append((upper % extent, lower % extent, upper // extent - lower // extent))
        else:
            terms.append((min(upper, extent), max(lower, 0), 0))
    runs: list[Run] = []
    for j, (upper, lower, wraps) in enumerate(terms):
        if runs:
            last = runs[-1]
            steps = (upper - (last.upper + (last.length - 1) * last.upper_step),
                     lower - (last.lower + (last.length - 1) * last.lower_step))
            if last.length == 1 and steps[0] in (0, 1) and steps[1] in (0, 1) and wraps == last.wraps:
                runs[-1] = Run(last.start, 2, last.upper, steps[0], last.lower, steps[1], wraps)
                continue
            if steps == (last.upper_step, last.lower_step) and wraps == last.wraps:
                runs[-1] = Run(last.start, last.length + 1, last.upper, last.upper_step, last.lower, last.lower_step, wraps)
                continue
        runs.append(Run(j, 1, upper, 0, lower, 0, wraps))
    return runs


def strided(prefix: Tensor, dim: int, first: int, step: int, length: int) -> Tensor:
    """Entries first, first + step, ... (``length`` of them; step 0 or 1) of ``prefix`` along ``dim``."""
    if step == 1:
        return prefix.narrow(dim, first, length)
    shape = list(prefix.shape)
    shape[dim] = length
    return prefix.narrow(dim, first, 1).expand(shape)


def window_sums(values: Tensor, dim: int, size: int, padding: str, dtype: torch.dtype) -> Tensor:
    """Sums of ``values`` over the window of ``size`` centred on each index along ``dim``,
    accumulated and returned in ``dtype`` (the prefix sums hold the whole axis's sum, so their
    rounding is that of the axis's total, not the window's: float64 keeps it below any logit's)."""
    extent = values.shape[dim]
    shape = list(values.shape)
    shape[dim] = extent + 1
    prefix = torch.empty(shape, dtype=dtype, device=values.device)
    prefix.narrow(dim, 0, 1).zero_()
    torch.cumsum(values, dim, dtype=dtype, out=prefix.narrow(dim, 1, extent))
    total = prefix.narrow(dim, extent, 1)
    out = torch.empty(values.shape, dtype=dtype, device=values.device)
    for run in window_runs(extent, size, padding):
        target = out.narrow(dim, run.start, run.length)
        torch.sub(strided(prefix, dim, run.upper, run.upper_step, run.length),
                  strided(prefix, dim, run.lower, run.lower_step, run.length), out=target)
        if run.wraps:
            target.add_(total, alpha=run.wraps)
    return out
