"""The ELS posterior with a certified error bound: only candidates whose weight is provably small are skipped.

Notation (docs/theory.md, "Local score machines", derives it): base-2 logits
l_c = (|q|^2 - |q - a c|^2) log2(e) / (2t) of a centred query q and candidate c, Z = sum_c 2^l_c.
A node of the candidates' tree (:mod:`lightning_diff.denoisers.patch_tree`) has count n and
holds its members' mean mu, spread s, radius r and box; with d = |q - a mu|:

- upper: every member has |q - a c| >= lb, the larger of max(0, d - a r) (ball) and the distance
  from q to the box on the leading axes combined with max(0, d_rest - a r_rest) off them, so
  Z_node <= n 2^((|q|^2 - lb^2) log2(e) / 2t);
- lower: 2^x is convex and mean_c |q - a c|^2 = d^2 + a^2 s, so (Jensen)
  Z_node >= n 2^((|q|^2 - d^2 - a^2 s) log2(e) / 2t).

Queries are ordered by the leaf they route to and taken ``DESCENT_BLOCK`` at a time. Each
``EVALUATION_BLOCK`` of them first evaluates exactly the leaves its queries route to, which
gives each query a floor: mass it certainly keeps. The block then descends the tree together:
at each depth a query keeps a child when its upper bound exceeds ``tolerance / L`` times its
floor (L: non-empty leaves; the floor rises with the nodes' lower bounds), and the block goes
on into the children any of its queries keeps (plus, per query, the child of largest upper
bound). At the leaves every evaluation block evaluates the leaves its own queries keep. What a
query does not evaluate (subtrees the block skipped, leaves its evaluation block skipped) adds
its upper bounds to D, an upper bound on the skipped mass. Z_kept is exact (the same running
softmax as the exact path), and with m = S / Z the exact posterior mean and m_k the computed one

    |m - m_k| = Z_skip / (Z_kept + Z_skip) |m_skip - m_k| <= D / (Z_kept + D) max(hi - m_k, m_k - lo)

per channel, [lo, hi] the range of the set's centre pixels: the bound each query reports. A
priori it cannot exceed tolerance times that range: a query skips at most L disjoint subtrees,
each below tolerance / L of its final floor F, so D <= tolerance F; and Z_kept + D >= F, F being
kept mass or the lower bound of a node whose unevaluated parts are in D.

Cost: about D multiply-adds (float64) per query and tree node visited for the ball and Jensen
bounds, and 5A more for the box where those two leave the node undecided for some query of the
block (at high noise nearly every node is kept for sure, at low noise skipped by the ball),
against D multiply-adds per query and candidate for the exact products; per query, the
evaluated candidates are the union over its evaluation block, so blocks of alike queries (the
ordering) keep that union near each query's own set.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_diff.denoisers.patch_candidates import CHUNK_ELEMENTS, PatchSet
from lightning_diff.denoisers.patch_posterior import (
    RunningPosterior,
    candidate_terms,
    logits_precision,
    scaled_queries,
)
from lightning_diff.denoisers.patch_tree import BRANCHING, PatchTree
from lightning_diff.denoisers.training_set import LOG2_E

# Queries whose bounds are formed together on the way down the tree (one product per node set).
DESCENT_BLOCK = 64
# Queries that share their evaluated candidates: fewer keep the union near each query's own
# kept set (9x9 Fashion-MNIST patches, N = 2,000, t = 0.001: 2.7% of the products per query
# alone, 8.8% in blocks of 16, 19% in blocks of 64), more keep the products nearer the matrix
# product's peak speed and the tensor operations per query fewer.
EVALUATION_BLOCK = 16
# Largest (queries x nodes x axes) block of the box bounds at once: 16 MB in float64.
BOX_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class BoundedPosterior:
    means: Tensor  # (R, C)
    bounds: Tensor  # (R,) the largest error over the channels, in exact arithmetic
    products: int  # distinct query x candidate pairs evaluated


class Evaluation:
    """One evaluation block's running posterior over the leaves it has evaluated so far."""

    def __init__(self, queries: Tensor, patches: PatchSet, tree: PatchTree, a: float, t: float,
                 precision: torch.dtype) -> None:
        self.patches, self.tree, self.a, self.t, self.precision = patches, tree, a, t, precision
        self.posterior = RunningPosterior(scaled_queries(queries, precision, a, t), patches.channels)
        self.evaluated = torch.zeros(0, dtype=torch.long, device=queries.device)
        self.products = 0

    def add(self, leaves: Tensor) -> None:
        """Evaluate the ``leaves`` not evaluated yet."""
        leaves = leaves[~torch.isin(leaves, self.evaluated)]
        self.evaluated = torch.cat([self.evaluated, leaves])
        mean = self.tree.stats.mean
        for ids, multiplicity in leaf_members(self.tree, leaves, max(1, CHUNK_ELEMENTS // self.patches.dim)):
            chunk = self.patches.gather(ids)
            operands, offsets, weighted = candidate_terms(chunk, self.patches.centres(chunk), mean, self.a, self.t,
                                                          self.precision)
            self.posterior.add(operands, offsets.add_(torch.log2(multiplicity.to(offsets.dtype))), weighted)
            self.products += self.posterior.scaled.shape[0] * ids.shape[0]


def bounded_posterior(queries: Tensor, patches: PatchSet, tree: PatchTree, a: float, t: float, tolerance: float
                      ) -> BoundedPosterior:
    """Posterior means of raw ``queries`` (R, D) over ``patches``, skipping what the tree proves small."""
    stats = tree.stats
    centred = queries - a * stats.mean
    precision = logits_precision(centred, stats, a, t)
    routed = tree.route(centred / a)
    order = torch.argsort(routed, stable=True)
    threshold = math.log2(tolerance / int((tree.counts[-1] > 0).sum()))
    means = queries.new_empty(queries.shape[0], patches.channels)
    bounds = queries.new_empty(queries.shape[0], dtype=torch.float64)
    products = 0
    for start in range(0, queries.shape[0], DESCENT_BLOCK):
        rows = order[start : start + DESCENT_BLOCK]
        parts = [slice(s, s + EVALUATION_BLOCK) for s in range(0, rows.shape[0], EVALUATION_BLOCK)]
        evaluations = []
        for part in parts:
            evaluation = Evaluation(centred[rows[part]], patches, tree, a, t, precision)
            first = torch.unique(routed[rows[part]])
            evaluation.add(first[tree.counts[-1][first] > 0])
            evaluations.append(evaluation)
        floor = torch.cat([evaluation.posterior.log2_normaliser() for evaluation in evaluations])
        leaves, upper, keep, skipped = descend(centred[rows].double(), tree, a, t, threshold, floor)
        for part, evaluation in zip(parts, evaluations):
            evaluation.add(leaves[keep[part].any(dim=0)])
            missed = ~torch.isin(leaves, evaluation.evaluated)
            block_skipped = skipped[part]
            if bool(missed.any()):
                block_skipped = torch.logaddexp2(block_skipped, log2_sum_exp2(upper[part][:, missed]))
            block_means = evaluation.posterior.means()
            missing = torch.exp2(block_skipped - evaluation.posterior.log2_normaliser())
            reach = torch.maximum(stats.centre_high - block_means, block_means - stats.centre_low).amax(dim=1)
            means[rows[part]] = block_means
            bounds[rows[part]] = missing / (1 + missing) * reach.double()
            products += evaluation.products
    return BoundedPosterior(means, bounds, products)


def descend(block: Tensor, tree: PatchTree, a: float, t: float, threshold: float, floor: Tensor
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A block of centred float64 queries (b, D) down the tree. ``floor``: log2 of mass already
    evaluated for each query. Returns the leaves the block reaches (F,), their upper bounds
    (b, F) and which queries keep them (b, F), and per query log2 of an upper bound on the mass of
    the subtrees skipped above the leaves (-inf when none)."""
    half_log2_e = LOG2_E / (2 * t)
    norms = block.pow(2).sum(dim=1, keepdim=True)
    coords = block @ tree.axes

    def node_bounds(depth: int, nodes: Tensor, floor: Tensor) -> tuple[Tensor, Tensor]:
        """Upper bounds (b, F) and the floor raised by the nodes' lower bounds. The box costs about
        5A operations per query and node against the ball's few, so it is formed only for nodes
        that some query neither skips by the ball nor keeps for sure (lower bound above the limit)."""
        centres = tree.centres[depth][nodes]
        squared = (norms - 2 * a * block @ centres.T + a * a * centres.pow(2).sum(dim=1)).clamp_min_(0)
        log_count = torch.log2(tree.counts[depth][nodes].double())
        lower = log_count + (norms - squared - a * a * tree.spreads[depth][nodes]) * half_log2_e
        floor = torch.maximum(floor, lower.amax(dim=1))
        limit = (floor + threshold)[:, None]
        ball = (squared.sqrt() - a * tree.radii[depth][nodes]).clamp_min_(0).pow(2)
        upper = log_count + (norms - ball) * half_log2_e
        undecided = ((upper > limit) & (lower <= limit)).any(dim=0).nonzero().squeeze(1)
        step = max(1, BOX_ELEMENTS // (block.shape[0] * coords.shape[1]))
        for first in range(0, undecided.shape[0], step):
            columns = undecided[first : first + step]
            chosen = nodes[columns]
            gaps = coords[:, None, :] - a * (centres[columns] @ tree.axes)[None]
            off_axes = (squared[:, columns] - gaps.pow(2).sum(dim=2)).clamp_min_(0)
            below = (a * tree.box_low[depth][chosen] - coords[:, None, :]).clamp_min_(0)
            above = (coords[:, None, :] - a * tree.box_high[depth][chosen]).clamp_min_(0)
            rest = (off_axes.sqrt() - a * tree.residual_radii[depth][chosen]).clamp_min_(0).pow(2)
            nearest = torch.maximum(ball[:, columns], (below + above).pow(2).sum(dim=2) + rest)
            upper[:, columns] = log_count[columns] + (norms - nearest) * half_log2_e
        return upper, floor

    def keep_children(depth: int, nodes: Tensor, floor: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        children = (nodes[:, None] * BRANCHING + torch.arange(BRANCHING, device=block.device)).reshape(-1)
        children = children[tree.counts[depth][children] > 0]
        upper, floor = node_bounds(depth, children, floor)
        keep = upper > (floor + threshold)[:, None]
        keep[torch.arange(keep.shape[0], device=keep.device), upper.argmax(dim=1)] = True
        return children, upper, keep, floor

    nodes = torch.zeros(1, dtype=torch.long, device=block.device)
    floor = node_bounds(0, nodes, floor)[1]
    skipped = torch.full_like(floor, -torch.inf)
    for depth in range(1, tree.depth):
        children, upper, keep, floor = keep_children(depth, nodes, floor)
        kept = keep.any(dim=0)
        if not bool(kept.all()):
            skipped = torch.logaddexp2(skipped, log2_sum_exp2(upper[:, ~kept]))
        nodes = children[kept]
    leaves, upper, keep, _ = keep_children(tree.depth, nodes, floor)
    return leaves, upper, keep, skipped


def log2_sum_exp2(values: Tensor) -> Tensor:
    """log2 sum_j 2^values[:, j] per row."""
    return torch.logsumexp(values * math.log(2.0), dim=1) * LOG2_E


def leaf_members(tree: PatchTree, leaves: Tensor, chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The distinct candidates of ``leaves``, ``chunk`` at a time: (indices (int64), multiplicities)."""
    starts = tree.leaf_starts[leaves]
    lengths = tree.leaf_starts[leaves + 1] - starts
    total = int(lengths.sum())
    shifts = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
    positions = shifts + torch.arange(total, device=shifts.device)
    for start in range(0, total, chunk):
        part = positions[start : start + chunk]
        yield tree.members[part].long(), tree.multiplicity[part]
