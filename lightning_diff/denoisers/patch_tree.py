"""A k-means tree over one candidate set, whose nodes bound the posterior mass of their patches.

Every node holds a group of candidates (a leaf: the candidates routed to it; an inner node: its
children's) and, for the bounds of :mod:`lightning_diff.denoisers.local_score_bound`, their
count n, their mean mu, their radius r = max |c - mu|, their spread s = mean |c - mu|^2, and
a box: with V the set's ``AXES`` leading principal directions, the range of V^T c over the
members per direction, and the radius of the rest, max |(I - V V^T)(c - mu)|. All are float64
from the float32 candidates the posterior reads. In high dimension a ball is a poor bound for a
noisy query: the noise is nearly orthogonal to the spread of the patches, yet the triangle
inequality subtracts the whole radius from the distance; the box keeps the directions apart
(docs/theory.md). The leaves' candidates are listed contiguously (``members``), so a leaf is a
range, and identical candidates (which route to the same leaf) are listed once with their
``multiplicity``: exact, since equal patches have equal logits, and where it matters most: a
uniform background is one patch repeated (18% of full Fashion-MNIST's 5x5 patches repeat
another), so a background pixel's posterior, spread evenly over all of them, costs one product.

The tree is complete with ``BRANCHING`` children per node: a node at depth k is index i of
depth k's arrays and its children are b i .. b i + b - 1 of depth k + 1. The routing centres
come from a few Lloyd rounds per node on a sample of the set (at most ``SAMPLES_PER_LEAF`` per
leaf); every candidate then descends to the nearest routing centre among its node's children,
and the statistics are measured on the candidates that arrived, so the bounds hold whatever the
k-means found (a poor split only makes them looser). Empty nodes (count 0) carry no mass.

Cost for M candidates of dimension D and depth d: d b D multiply-adds per candidate to route
it, two more passes over the set for the statistics, and d ``LLOYD_ROUNDS`` b D per sample;
at the released settings (N = 1,000, 16x16, P = 5: M = 144,000, D = 25, d = 3) about 0.1 GFLOP,
against the 15 GFLOP of one exact level for 16 samples. Memory: each distinct candidate's index
and multiplicity, 8 bytes (277 MB at full Fashion-MNIST, P = 5), the nodes (about L b / (b - 1) of them for L <= b^``MAX_DEPTH`` leaves,
about 1.5 D + 2 ``AXES`` + 5 float64 values each) and, while building, the sample (at most
``SAMPLE_ELEMENTS`` floats) and per candidate its leaf, its sort key and its rank (8 bytes each:
830 MB at P = 5).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_diff.denoisers.patch_candidates import CHUNK_ELEMENTS, PatchSet, SetStatistics

# Children per node: 8 keeps a level's bounds one small matrix product per block of queries
# while the tree stays shallow (depth 6 for full Fashion-MNIST's 34.6M candidates at P = 5).
BRANCHING = 8
# Candidates per leaf aimed at: the unit of work a block of queries keeps or skips. Smaller
# leaves prune finer but cost more bounds (about D + 5 AXES operations per query and node); on
# 5x5 digit patches at t = 0.01 a query alone kept 3.2% of the candidates with 7 per leaf, 8.4%
# with 56.
LEAF_SIZE = 32
# At most b^6 = 262,144 leaves: the nodes then take about 180 MB at D = 25 (full Fashion-MNIST,
# P = 5: 132 candidates per leaf), a bound on the tree's memory beside its 8 bytes per candidate.
MAX_DEPTH = 6
LLOYD_ROUNDS = 5
SAMPLES_PER_LEAF = 32
# Principal directions of a node's box: the leading ones hold most of a patch set's variance,
# the rest is bounded by one radius; each costs a query about 3 operations per node.
AXES = 16
SAMPLE_ELEMENTS = 1 << 26
# Largest block of gathered child centres (values) when routing: 16 MB in float32.
ROUTE_ELEMENTS = 1 << 22


def tree_depth(count: int) -> int:
    """Levels below the root for ``count`` candidates: 0 when the set is too small to split."""
    if count < BRANCHING * LEAF_SIZE:
        return 0
    return min(MAX_DEPTH, max(1, round(math.log(count / LEAF_SIZE, BRANCHING))))


@dataclass
class PatchTree:
    """The tree of one candidate set (see the module docstring); per-depth lists run from the root
    (depth 0, one node) to the leaves (depth ``depth``, ``BRANCHING ** depth`` nodes)."""

    stats: SetStatistics
    routing: list[Tensor]  # depth k >= 1: (b^k, D) float32 routing centres, centred on stats.mean
    centres: list[Tensor]  # (b^k, D) float64 member means, centred
    radii: list[Tensor]  # (b^k,) float64
    spreads: list[Tensor]  # (b^k,) float64
    counts: list[Tensor]  # (b^k,) int64
    axes: Tensor  # (D, A) float64 orthonormal leading principal directions of the set
    box_low: list[Tensor]  # (b^k, A) float64 smallest V^T (c - mean) over the members
    box_high: list[Tensor]  # (b^k, A) float64
    residual_radii: list[Tensor]  # (b^k,) float64 max |(I - V V^T)(c - mu)|
    members: Tensor  # (U,) int32 indices of the distinct candidates, leaf by leaf
    multiplicity: Tensor  # (U,) int32 how many candidates equal each
    leaf_starts: Tensor  # (L + 1,) int64 where each leaf's distinct candidates start in members

    @property
    def depth(self) -> int:
        return len(self.counts) - 1

    def nbytes(self) -> int:
        """Memory held (the set statistics aside)."""
        tensors = [self.axes, self.members, self.multiplicity, self.leaf_starts]
        for per_depth in (self.routing, self.centres, self.radii, self.spreads, self.counts, self.box_low,
                          self.box_high, self.residual_radii):
            tensors += per_depth
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def route(self, rows: Tensor) -> Tensor:
        """The leaf (int64) each centred row (k, D) descends to."""
        node = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
        for centres in self.routing:
            node = nearest_child(rows, centres.reshape(-1, BRANCHING, rows.shape[1]), node)
        return node


def nearest_child(rows: Tensor, children: Tensor, node: Tensor) -> Tensor:
    """For rows at nodes ``node``, the index at the next depth of the nearest of their node's
    children (``children``: (nodes, b, D))."""
    out = torch.empty_like(node)
    norms = children.pow(2).sum(dim=-1)
    step = max(1, ROUTE_ELEMENTS // children[0].numel())
    for start in range(0, rows.shape[0], step):
        part = slice(start, start + step)
        distances = norms[node[part]] - 2 * torch.einsum("kd,kbd->kb", rows[part], children[node[part]])
        out[part] = node[part] * BRANCHING + distances.argmin(dim=1)
    return out


def lloyd_tree(sample: Tensor, depth: int, generator: torch.Generator) -> list[Tensor]:
    """Routing centres per depth from k-means on ``sample`` (S, D), all nodes of a depth at once:
    each node's b centres start at b of its own sample rows (its parent's centre when it has none)."""
    node = torch.zeros(sample.shape[0], dtype=torch.long, device=sample.device)
    parent_centres = sample.mean(dim=0, keepdim=True)
    levels = []
    for k in range(depth):
        nodes = BRANCHING**k
        counts = torch.bincount(node, minlength=nodes)
        shuffled = torch.randperm(sample.shape[0], generator=generator).to(sample.device)
        grouped = shuffled[torch.argsort(node[shuffled], stable=True)]
        starts = torch.cumsum(counts, 0) - counts
        picks = starts[:, None] + torch.arange(BRANCHING, device=sample.device) % counts.clamp_min(1)[:, None]
        centres = sample[grouped[picks.clamp_max(sample.shape[0] - 1)]]
        centres[counts == 0] = parent_centres[counts == 0].unsqueeze(1)
        for _ in range(LLOYD_ROUNDS):
            child = nearest_child(sample, centres, node)
            sums = torch.zeros(nodes * BRANCHING, sample.shape[1], device=sample.device).index_add_(0, child, sample)
            sizes = torch.bincount(child, minlength=nodes * BRANCHING)
            filled = sizes > 0
            flat = centres.reshape(nodes * BRANCHING, -1)
            flat[filled] = sums[filled] / sizes[filled, None]
        node = nearest_child(sample, centres, node)
        levels.append(centres.reshape(nodes * BRANCHING, -1))
        parent_centres = levels[-1]
    return levels


def build_tree(patches: PatchSet, stats: SetStatistics, generator: torch.Generator) -> PatchTree:
    """The tree of ``patches`` (depth from :func:`tree_depth`, at least 1)."""
    depth = max(1, tree_depth(patches.count))
    leaves = BRANCHING**depth
    device = patches.images.device
    sample_size = min(patches.count, SAMPLES_PER_LEAF * leaves, SAMPLE_ELEMENTS // patches.dim)
    chosen = torch.randint(patches.count, (sample_size,), generator=generator).to(device)
    sample = patches.gather(chosen) - stats.mean
    routing = lloyd_tree(sample, depth, generator)
    axes = principal_axes(sample)
    del sample
    partial = PatchTree(stats, routing, [], [], [], [], axes, [], [], [], torch.empty(0), torch.empty(0), torch.empty(0))

    leaf_of = torch.empty(patches.count, dtype=torch.long, device=device)
    sums = torch.zeros(leaves, patches.dim, dtype=torch.float64, device=device)
    for start, chunk in patches.chunks():
        centred = chunk - stats.mean
        leaf = partial.route(centred)
        leaf_of[start : start + chunk.shape[0]] = leaf
        sums.index_add_(0, leaf, centred.double())
    counts = torch.bincount(leaf_of, minlength=leaves)
    means = sums / counts.clamp_min(1)[:, None]
    mean_coords = means @ axes
    squared = torch.zeros(leaves, dtype=torch.float64, device=device)
    farthest = torch.zeros(leaves, dtype=torch.float64, device=device)
    residual = torch.zeros(leaves, dtype=torch.float64, device=device)
    low = torch.full((leaves, axes.shape[1]), torch.inf, dtype=torch.float64, device=device)
    high = torch.full((leaves, axes.shape[1]), -torch.inf, dtype=torch.float64, device=device)
    for start, chunk in patches.chunks():
        leaf = leaf_of[start : start + chunk.shape[0]]
        centred = chunk.double() - stats.mean.double()
        coords = centred @ axes
        distances = (centred - means[leaf]).pow(2).sum(dim=1)
        squared.index_add_(0, leaf, distances)
        farthest.scatter_reduce_(0, leaf, distances, reduce="amax")
        off_axes = (distances - (coords - mean_coords[leaf]).pow(2).sum(dim=1)).clamp_min(0)
        residual.scatter_reduce_(0, leaf, off_axes, reduce="amax")
        expanded = leaf[:, None].expand_as(coords)
        low.scatter_reduce_(0, expanded, coords, reduce="amin")
        high.scatter_reduce_(0, expanded, coords, reduce="amax")

    levels = [[means], [farthest.sqrt()], [squared / counts.clamp_min(1)], [counts], [low], [high], [residual.sqrt()]]
    for _ in range(depth):
        for store, value in zip(levels, merge_children(*(store[0] for store in levels), axes)):
            store.insert(0, value)
    centres, radii, spreads, sizes, lows, highs, residuals = levels
    members, multiplicity, distinct = distinct_members(patches, leaf_of, leaves, generator)
    leaf_starts = torch.cat([counts.new_zeros(1), torch.cumsum(distinct, 0)])
    return PatchTree(stats, routing, centres, radii, spreads, sizes, axes, lows, highs, residuals, members,
                     multiplicity, leaf_starts)


def distinct_members(patches: PatchSet, leaf_of: Tensor, leaves: int, generator: torch.Generator
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """The candidates sorted by leaf with identical ones merged: (indices (U,) int32, multiplicity
    (U,) int32, distinct candidates per leaf). Within a leaf they are sorted by a random projection,
    so equal patches sit side by side; neighbours with equal projections are compared value by
    value before they are merged, so a merge is never a guess."""
    direction = torch.randn(patches.dim, generator=generator, dtype=torch.float64).to(leaf_of.device)
    keys = torch.cat([chunk.double() @ direction for _, chunk in patches.chunks()])
    order = torch.argsort(keys, stable=True)
    order = order[torch.argsort(leaf_of[order], stable=True)]
    same = (leaf_of[order[1:]] == leaf_of[order[:-1]]) & (keys[order[1:]] == keys[order[:-1]])
    candidates = same.nonzero().squeeze(1)
    step = max(1, CHUNK_ELEMENTS // patches.dim)
    for start in range(0, candidates.shape[0], step):
        pairs = candidates[start : start + step]
        equal = (patches.gather(order[pairs]) == patches.gather(order[pairs + 1])).all(dim=1)
        same[pairs[~equal]] = False
    first = torch.cat([same.new_ones(1), ~same])
    starts = first.nonzero().squeeze(1)
    multiplicity = torch.diff(starts, append=starts.new_full((1,), order.shape[0]))
    distinct = torch.bincount(leaf_of[order[starts]], minlength=leaves)
    return order[starts].to(torch.int32), multiplicity.to(torch.int32), distinct


def principal_axes(sample: Tensor) -> Tensor:
    """The ``AXES`` leading principal directions (D, A) of centred rows, float64."""
    rows = sample.double()
    _, vectors = torch.linalg.eigh(rows.T @ rows)
    return vectors[:, -min(AXES, rows.shape[1]) :].flip(1).contiguous()


def merge_children(centres: Tensor, radii: Tensor, spreads: Tensor, counts: Tensor, low: Tensor, high: Tensor,
                   residuals: Tensor, axes: Tensor) -> tuple[Tensor, ...]:
    """A depth's statistics from its children's (empty children count for nothing): the
    count-weighted mean; the spread by the parallel-axis rule, sum n_c (s_c + |mu_c - mu|^2) / n;
    the radius bounded by max |mu_c - mu| + r_c (every member is within r_c of mu_c); the box's
    union; and its off-axes radius bounded the same way as the radius, off the axes."""
    parents = counts.shape[0] // BRANCHING
    weights = counts.double().reshape(parents, BRANCHING)
    filled = weights > 0
    total = weights.sum(dim=1)
    grouped = centres.reshape(parents, BRANCHING, -1)
    mean = (grouped * weights[..., None]).sum(dim=1) / total.clamp_min(1)[:, None]
    gaps = grouped - mean[:, None]
    offsets = gaps.pow(2).sum(dim=-1)
    off_axes = (offsets - (gaps @ axes).pow(2).sum(dim=-1)).clamp_min(0)
    spread = (weights * (spreads.reshape(parents, BRANCHING) + offsets)).sum(dim=1) / total.clamp_min(1)
    reach = torch.where(filled, offsets.sqrt() + radii.reshape(parents, BRANCHING), 0.0).amax(dim=1)
    residual = torch.where(filled, off_axes.sqrt() + residuals.reshape(parents, BRANCHING), 0.0).amax(dim=1)
    unused = ~filled[..., None]
    low = low.reshape(parents, BRANCHING, -1).masked_fill(unused, torch.inf).amin(dim=1)
    high = high.reshape(parents, BRANCHING, -1).masked_fill(unused, -torch.inf).amax(dim=1)
    return mean, reach, spread, counts.reshape(parents, BRANCHING).sum(dim=1), low, high, residual
