"""Uncertainty of per-sample statistics: percentile bootstrap over samples, paired differences,
and the exact (Clopper–Pearson) bound of a proportion.

Every same-noise number of a study (median r^2, median Pearson r, mean agreement cosine, the
share of a baseline's error a machine removes) is a statistic of per-sample values, so its
sampling uncertainty comes from resampling the samples (Efron & Tibshirani 1993, ch. 13: the
percentile interval). Two statistics computed on the *same* samples (seed-aligned rows) are
compared by resampling the sample indices once for both (a paired bootstrap), so what the two
rows share cancels in the difference.

The resampling is seeded (a study's interval is a file's number, so it must reproduce) and
vectorised: ``resamples`` index draws of the whole sample set at once.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import beta
from torch import Tensor

from lightning_diff.errors import UserError
from lightning_diff.seeding import generator

LEVEL = 0.95
RESAMPLES = 2000
# The bootstrap's own seed stream (derive_seed(BOOTSTRAP_STREAM, seed)): apart from every sample seed.
BOOTSTRAP_STREAM = 0xB0075


@dataclass(frozen=True)
class Interval:
    """A statistic's estimate on all samples and its two-sided ``level`` interval."""

    value: float
    low: float
    high: float
    level: float = LEVEL

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def excludes(self, point: float) -> bool:
        return point < self.low or point > self.high

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def nan_median(values: Tensor) -> Tensor:
    """Median along the last dimension, NaNs skipped (numpy's median: the mean of the middle two)."""
    return values.nanquantile(0.5, dim=-1)


def nan_mean(values: Tensor) -> Tensor:
    return values.nanmean(dim=-1)


Statistic = Callable[[Tensor], Tensor]


def bootstrap(
    per_sample: Tensor | Sequence[Tensor],
    statistic: Statistic = nan_median,
    combine: Callable[..., Tensor] | None = None,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """The percentile interval of ``statistic`` of per-sample values.

    Args:
        per_sample: one (n,) tensor of per-sample values, or several of the same n (rows aligned
            by seed): each resample draws one index set and applies it to all of them (paired).
        statistic: reduces (..., n) to (...) along the last dimension (default: the NaN-skipping median).
        combine: with several tensors, maps their statistics to one value (e.g. ``lambda a, b: a - b``
            for a paired difference); required then.
        resamples, level, seed: number of bootstrap draws, coverage, and the draw's seed.
    """
    # A lone value arrives 0-dimensional (torchmetrics squeezes one-element results): one sample.
    arrays = [torch.atleast_1d(array) for array in ([per_sample] if isinstance(per_sample, Tensor) else per_sample)]
    sizes = {array.shape[-1] for array in arrays}
    if len(sizes) != 1 or not all(array.dim() == 1 for array in arrays):
        raise UserError(
            f"a paired bootstrap needs per-sample values of one length, got shapes {[tuple(a.shape) for a in arrays]}; "
            "compare runs drawn from the same seeds"
        )
    if len(arrays) > 1 and combine is None:
        raise UserError("bootstrap of several per-sample arrays needs combine= (how their statistics make one value)")
    if not 0 < level < 1 or resamples < 100:
        raise UserError(f"level={level} must be in (0, 1) and resamples={resamples} at least 100")
    (count,) = sizes
    if count < 2:
        raise UserError(f"an interval over samples needs at least 2 samples, got {count}; draw more samples")
    join = combine if combine is not None else (lambda single: single)
    arrays = [array.detach().double().cpu() for array in arrays]
    point = float(join(*(statistic(array) for array in arrays)))
    index = torch.randint(count, (resamples, count), generator=generator(BOOTSTRAP_STREAM, seed))
    draws = join(*(statistic(array[index]) for array in arrays))
    draws = draws[torch.isfinite(draws)]
    if draws.numel() == 0:
        return Interval(point, float("nan"), float("nan"), level)
    tail = (1.0 - level) / 2.0
    low, high = torch.quantile(draws, torch.tensor([tail, 1.0 - tail], dtype=draws.dtype)).tolist()
    return Interval(point, low, high, level)


def paired_difference(
    first: Tensor, second: Tensor, statistic: Statistic = nan_median, **options: float
) -> Interval:
    """The interval of ``statistic(first) - statistic(second)`` for per-sample values of the same
    samples (a paired bootstrap): what the two share, sample by sample, cancels."""
    return bootstrap([first, second], statistic, lambda a, b: a - b, **options)


def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> Interval:
    """The exact two-sided interval of a binomial proportion (Clopper & Pearson 1934): the
    quantiles of Beta(k, n - k + 1) and Beta(k + 1, n - k). With no success its upper end,
    1 - (alpha/2)^(1/n), is what "memorized 0 of n" still allows."""
    if trials < 1 or not 0 <= successes <= trials:
        raise UserError(f"a proportion needs 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return Interval(successes / trials, low, high, level)
