"""Posterior means of centre pixels over candidate patches streamed in chunks (the ELS machine's core).

For queries q (noisy patches) and candidates c with centre pixels c(0), the posterior mean is
sum_m softmax_m(-||q - a c_m||^2 / (2t)) c_m(0). Up to a term that is the same for every
candidate the logit is (a q.c - a^2 |c|^2 / 2) / t, and the same holds after moving both to the
candidates' mean mu (q - a mu, c - mu), which keeps the terms small on real images (a
background shared by most patches). Memory traffic and the exponentials are the cost: the
scalars (and log2 e) are folded into the operands so one ``addmm`` writes the logits in base 2,
``exp2`` is taken in place (see ``LOG2_E``), and a column of ones beside the centres gives the
softmax's normaliser in the same product as the mean. A running maximum per query lets the
candidates arrive in any number of chunks, so memory does not grow with the set.

The terms still grow like |c|^2 / t, so at low noise their float32 rounding would reach the
output; where its bound (:func:`logit_rounding`) exceeds ``LOGIT_ROUNDING`` the logits are
formed in float64 and only their differences from the running maximum go to float32.

At low noise a query's weight sits on the few candidates near it, and most of the work would
go to weights that underflow to zero. So :func:`exact_posterior` orders queries and candidates
along the set's leading direction u (a :class:`Band`). For a block of queries with u.q in
[lo, hi] and a run of candidates with a u.c in [lo', hi'], every pair is at least the gap g
between the two intervals apart (|q - a c| >= |u.q - a u.c|, u a unit vector); with each
query's best distance so far d (from its running maximum), a run with g^2 > d^2 + 2 t K ln 2
for every query of the block holds only weights below 2^-K of each query's best, and
``SKIP_BELOW`` = K is beyond float32's range: the run is passed over, products and all. Its
float32 weights would have been zero (at float64 levels, where ``shifted_weights`` raises them
to 2^-126, the posterior moves by less than 2^-126 of its total per candidate skipped). Runs are
taken in order of their gap, so the nearest candidates come first and, once one run is passed
over, so are all after it. The study-size case (64 samples, four blocks) evaluates 0.409 of
the products at t = 1e-3 and all of them at its other nine levels (docs/performance.md).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_diff.denoisers.patch_candidates import PatchSet, SetStatistics
from lightning_diff.denoisers.training_set import LOG2_E

# Largest logits block (elements) of one chunk of candidates: 4 MB in float32 (measured on 2
# cores at the released code's settings, 16 samples: 0.24 s per sample with 0.5M- or 1M-element
# blocks, 0.25 with 2M, 0.33 with 4M: the block stays nearer the caches).
BLOCK_ELEMENTS = 1 << 20
# Queries (pixels x samples) handled at once: more would shrink the candidate chunks below 256 and
# rescale a larger accumulator after each, a cost quadratic in the batch (issue 23's validation of
# 500 images in one batch; docs/performance.md, "A closed-form machine's run").
QUERY_ROWS = BLOCK_ELEMENTS // 256
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
# Largest worst-case bound on a float32 logit's rounding (logit_rounding) accepted. The bound
# overstates the error the output sees 10-60x (16x16, N = 1,000: bounds 1e-5 to 4e-5 at t >= 0.11
# came with output errors <= 1.5e-6 against float64; at t = 1e-3 a bound of 1.4e-3 with 2.2e-5),
# so 1e-4 keeps the output within 1e-5 of float64 and float64 for the lowest levels only.
LOGIT_ROUNDING = 1e-4
# Weights summed in float32 by one matrix product; the partial sums are added in float64. A float32
# sum's rounding grows like the square root of its length: at 16x16, N = 1,000 the posterior
# means moved 8.8e-6 from float64 with 32,768-term products (blocks of 32 queries), 4.8e-6 with
# 4,096, so the products stop at 2,048 terms and the sums over them do not add to the rounding.
SUM_TERMS = 2048
# log2 of float32's smallest normal number (see shifted_weights).
SMALLEST_EXPONENT = -126.0
# Base-2 logits this far below a query's best are passed over (see the module's docstring):
# 2^-160 is below float32's smallest subnormal (2^-149), so their float32 weights are zero, and
# the 11 to spare cover the rounding of the distances the test compares (relative 1e-6 of
# squared distances of order D, against 2 t 160 ln 2).
SKIP_BELOW = 160.0


@dataclass(frozen=True)
class Band:
    """What lets a block of queries pass over far candidates: each query's squared centred norm
    (float64), the range of the queries' positions along the set's direction, and a, t."""

    squared_norms: Tensor  # (R,) float64
    low: float
    high: float
    a: float
    t: float

    @classmethod
    def of(cls, centred: Tensor, positions: Tensor, a: float, t: float) -> "Band":
        """The band of centred queries (R, D) at ``positions`` (R,) along the direction."""
        return cls(centred.double().pow(2).sum(dim=1), float(positions.min()), float(positions.max()), a, t)

    def gap(self, positions: Tensor) -> Tensor:
        """Lower bound on |q - a c| between any query of the band and candidates whose positions
        along the direction (each run's first and last, sorted) are ``positions`` (k, 2)."""
        scaled = self.a * positions
        return (torch.maximum(scaled[:, 0] - self.high, self.low - scaled[:, 1])).clamp_min(0.0)

    def reach(self, maximum: Tensor) -> float:
        """The squared distance beyond which every query's weights are below 2^-SKIP_BELOW of its
        best so far: d^2 + 2 t K ln 2 with d^2 = |q|^2 - 2 t l_max ln 2 (base-2 logits)."""
        best = self.squared_norms - 2.0 * self.t * math.log(2.0) * maximum.squeeze(1).double()
        return float(best.max()) + 2.0 * self.t * math.log(2.0) * SKIP_BELOW


def logit_rounding(queries: Tensor, largest_candidate: float, a: float, t: float) -> float:
    """Bound on the float32 rounding error of the largest logit, eps (a |q| |c| + a^2 |c|^2 / 2) / t,
    for centred ``queries`` (R, D) and the largest centred candidate norm."""
    largest_query = float(queries.norm(dim=-1).max()) if queries.numel() else 0.0
    return FLOAT32_EPS * (a * largest_query * largest_candidate + 0.5 * a * a * largest_candidate**2) / t


class RunningPosterior:
    """The running base-2 log-sum-exp of a block of queries over candidates added chunk by chunk.

    ``scaled``: the centred queries times a log2(e) / t, in the logits' precision (R, D);
    ``band``: where given, candidates that come with their positions along the set's direction
    are passed over when provably negligible (the module's docstring).
    """

    def __init__(self, scaled: Tensor, channels: int, band: Band | None = None) -> None:
        self.scaled = scaled
        self.band = band
        self.maximum = torch.full((scaled.shape[0], 1), -math.inf, dtype=scaled.dtype, device=scaled.device)
        self.acc = torch.zeros(scaled.shape[0], channels + 1, dtype=torch.float64, device=scaled.device)
        self.products = 0

    def add(self, operands: Tensor, offsets: Tensor, weighted: Tensor, positions: Tensor | None = None) -> None:
        """Candidates ``operands`` (m, D) in the logits' precision, their offsets -a^2 |c|^2 log2(e) / 2t
        (m,) and [centre pixels, 1] (m, C + 1) in float32; with a band, their ``positions`` (m,)
        along the set's direction, ascending."""
        chunk = max(1, BLOCK_ELEMENTS // max(1, self.scaled.shape[0]))
        # The weighted sums as weights (R, m) times a column-major (m, C + 1) operand: with so few
        # columns the BLAS here is fastest in that layout (4,096 x 256 weights: 80 us, against 122
        # for the (C + 1) x R product and 390 with a row-major operand; 4,096 x 2,048: 627 against
        # 2,950 for the (C + 1) x R product).
        weighted_rows = weighted.T.contiguous()
        starts = torch.arange(0, operands.shape[0], chunk)
        band = self.band if positions is not None else None
        gaps = [0.0] * len(starts)
        if band is not None:
            ends = (starts + chunk).clamp_max(operands.shape[0]) - 1
            ranges = torch.stack([positions[starts], positions[ends]], dim=1).cpu().double()
            run_gaps, nearest_first = band.gap(ranges).sort(stable=True)
            starts, gaps = starts[nearest_first], run_gaps.tolist()
        for start, gap in zip(starts.tolist(), gaps):
            if band is not None and gap > 0 and gap**2 > band.reach(self.maximum):
                break  # this run and every later one (farther, with the reach only shrinking)
            block = slice(start, start + chunk)
            self.products += self.scaled.shape[0] * operands[block].shape[0]
            logits = torch.addmm(offsets[block], self.scaled, operands[block].T)
            new_max = torch.maximum(self.maximum, logits.amax(dim=1, keepdim=True))
            weights = shifted_weights(logits, new_max, weighted.dtype)
            self.acc *= torch.exp2(self.maximum - new_max).to(self.acc.dtype)
            block_rows = weighted_rows[:, block]
            for first in range(0, weights.shape[1], SUM_TERMS):
                terms = slice(first, first + SUM_TERMS)
                self.acc += (weights[:, terms] @ block_rows[:, terms].T).double()
            self.maximum = new_max

    def means(self) -> Tensor:
        """The posterior means (R, C) over every candidate added."""
        return (self.acc[:, :-1] / self.acc[:, -1:]).float()

    def log2_normaliser(self) -> Tensor:
        """log2 of sum_m 2^logit_m (R,), in the logits' base (float64)."""
        return self.maximum.squeeze(1).double() + torch.log2(self.acc[:, -1])


def shifted_weights(logits: Tensor, maximum: Tensor, dtype: torch.dtype) -> Tensor:
    """2^(logits - maximum) in ``dtype``, overwriting ``logits``.

    Float64 logits are shifted in place and then converted: a subtraction into a float32 output
    is formed in float64 and copied, which took twice as long here (420 against 245 us for 1M
    values). They come from the lowest noise levels, where most weights fall below float32's
    normal range, and ``exp2`` runs about three times slower when its result is subnormal (353
    against 125 us per 1M values here); so there the shifted logits are raised to
    ``SMALLEST_EXPONENT`` first, which moves a posterior by at most m 2^-126 of its total for m
    candidates. (At float32 levels that extra pass cost about as much as it saved.)"""
    if logits.dtype == dtype:
        return logits.sub_(maximum).exp2_()
    return logits.sub_(maximum).to(dtype).clamp_min_(SMALLEST_EXPONENT).exp2_()


def candidate_terms(patches: Tensor, centres: Tensor, mean: Tensor, a: float, t: float, precision: torch.dtype
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """(operands, offsets, [centres, 1]) of raw candidate rows for :meth:`RunningPosterior.add`."""
    centred = (patches - mean).to(precision)
    offsets = centred.pow(2).sum(dim=1).mul_(-0.5 * LOG2_E * a * a / t)
    ones = torch.ones(centres.shape[0], 1, dtype=centres.dtype, device=centres.device)
    return centred, offsets, torch.cat([centres, ones], dim=1)


def logits_precision(queries: Tensor, stats: SetStatistics, a: float, t: float) -> torch.dtype:
    """float64 where the float32 logits' rounding bound exceeds ``LOGIT_ROUNDING``. Decided on every
    query of the call at once, so a sample's output does not depend on the block it falls in."""
    return torch.float64 if logit_rounding(queries, stats.largest_norm, a, t) > LOGIT_ROUNDING else queries.dtype


def scaled_queries(queries: Tensor, precision: torch.dtype, a: float, t: float) -> Tensor:
    """Centred queries as the left operand of the logits: times a log2(e) / t, in ``precision``."""
    return queries.to(precision) * (LOG2_E * a / t)


def exact_posterior(queries: Tensor, patches: PatchSet, stats: SetStatistics, a: float, t: float,
                    direction: Tensor | None = None) -> tuple[Tensor, int]:
    """Posterior means (R, C) of raw ``queries`` (R, D) over every candidate of ``patches``, and the
    query-candidate products evaluated.

    The candidates stream past every block of queries (``QUERY_ROWS``), one copied chunk at a time
    (``CHUNK_ELEMENTS``), so memory is O(R (D + C) + chunk), whatever the set's size. With a unit
    ``direction`` (D,) the queries are blocked in their order along it, each chunk is taken in
    the same order, and a block passes over the candidates provably negligible for all its
    queries (the module's docstring); that pays only with several blocks to order.
    """
    centred = queries - a * stats.mean
    precision = logits_precision(centred, stats, a, t)
    order = None
    if direction is not None:
        along, order = (centred @ direction).sort()
        centred = centred[order]
    blocks = []
    for start in range(0, centred.shape[0], QUERY_ROWS):
        rows = slice(start, start + QUERY_ROWS)
        band = None if order is None else Band.of(centred[rows], along[rows], a, t)
        blocks.append(RunningPosterior(scaled_queries(centred[rows], precision, a, t), patches.channels, band))
    for _, chunk in patches.chunks():
        operands, offsets, weighted = candidate_terms(chunk, patches.centres(chunk), stats.mean, a, t, precision)
        positions = None
        if direction is not None:  # the operands are the centred candidates
            positions, ascending = (operands @ direction.to(operands.dtype)).sort()
            operands, offsets, weighted = operands[ascending], offsets[ascending], weighted[ascending]
        for block in blocks:
            block.add(operands, offsets, weighted, positions)
    means = torch.cat([block.means() for block in blocks]) if blocks else queries.new_zeros(0, patches.channels)
    if order is not None:
        means = torch.empty_like(means).index_copy_(0, order, means)
    return means, sum(block.products for block in blocks)
