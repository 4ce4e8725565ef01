"""Runs compared sample by sample from the same seeds: the two-model agreement of a variant's
two halves (Kadkhodaie et al.), each run's agreement and r^2 with the reference across training
seeds, and the seed-to-seed floor those numbers are read against (the reference trained with
other seeds), every one with its bootstrap interval over samples
(:mod:`lightning_diff.metrics.intervals`).

Agreement is :class:`~lightning_diff.metrics.agreement.TwoModelAgreement`'s mean cosine of
mean-removed samples; r^2 is the median over samples of
:func:`~lightning_diff.metrics.r2.per_sample_r2` with the reference's sample as the reference.

A run is compared with the reference only across training seeds (the run's seed s against a
reference run of seed s' != s, per-sample values averaged over every such pair), so a shared
initialisation or batch order cannot make two architectures look alike; where no reference run
of another seed exists the same-seed comparison is given and marked ``cross_seed: false``, and
no verdict is read from it. "Beyond the floor" is a paired test: the median of the run's
per-sample r^2 minus the median of the floor's (per sample, the mean over the floor's seed pairs)
has an interval wholly below 0.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_diff.errors import UserError
from lightning_diff.metrics.agreement import TwoModelAgreement
from lightning_diff.metrics.intervals import Interval, bootstrap, nan_mean, paired_difference
from lightning_diff.metrics.r2 import per_sample_r2
from lightning_diff.run.study import Run, halves, load_samples


@dataclass
class SameNoise:
    """A run against one or more anchors from the same seeds: per-sample r^2 (the anchor as the
    reference) and agreement cosines, each the mean over the pairs."""

    r2: Tensor
    cosine: Tensor
    pairs: list[str]
    cross_seed: bool

    def r2_interval(self) -> Interval:
        return bootstrap(self.r2)

    def agreement_interval(self) -> Interval:
        return bootstrap(self.cosine, nan_mean)


def cosines(samples: Tensor, anchor: Tensor) -> Tensor:
    """Per-sample agreement cosines of two seed-aligned sample sets."""
    metric = TwoModelAgreement()
    metric.update(samples, anchor)
    return metric.per_sample()


def compared(run: Run, anchors: list[Run], cross_seed: bool) -> SameNoise | None:
    """``run`` against each of ``anchors`` (per-sample values averaged over them); None when one
    was sampled from other seeds or at another shape."""
    samples, seeds = load_samples(run.samples)
    r2, cosine = [], []
    for anchor in anchors:
        anchor_samples, anchor_seeds = load_samples(anchor.samples)
        if not np.array_equal(seeds, anchor_seeds) or samples.shape != anchor_samples.shape:
            return None
        r2.append(per_sample_r2(anchor_samples, samples))
        cosine.append(cosines(samples, anchor_samples))
    pairs = [f"{run.name} (seed {seed_of(run)}) vs {a.name} (seed {seed_of(a)})" for a in anchors]
    return SameNoise(torch.stack(r2).mean(dim=0), torch.stack(cosine).mean(dim=0), pairs, cross_seed)


def seed_of(run: Run) -> Any:
    return run.config.get("seed")


def agreements(runs: list[Run]) -> dict[int, Interval]:
    """Two-model agreement (mean cosine, with its interval) of each run that has its other half, by ``id(run)``."""
    values = {}
    for a, b in halves(runs):
        if a.samples is None or b.samples is None:
            continue
        samples_a, seeds_a = load_samples(a.samples)
        samples_b, seeds_b = load_samples(b.samples)
        if not np.array_equal(seeds_a, seeds_b):
            raise UserError(
                f"the halves of {a.name} ({a.location}, {b.location}) were sampled from different seeds; the "
                "agreement compares samples from the same noise: give both runs the same seed and num_samples"
            )
        values[id(a)] = values[id(b)] = bootstrap(cosines(samples_a, samples_b), nan_mean)
    return values


def reference_group(runs: list[Run], reference: str | None, controls: list[str]) -> list[Run]:
    """The reference's runs and its seed controls that have samples on this machine."""
    names = {reference, *controls} if reference else set()
    return [run for run in runs if run.name in names and run.samples is not None]


def reference_comparisons(runs: list[Run], reference: str | None, controls: list[str]) -> dict[int, SameNoise]:
    """Each run with samples against the reference group's runs on the same training images, by
    ``id(run)``: across training seeds where a reference run of another seed exists, else (marked)
    the same-seed one. The group's own runs are compared with each other."""
    group = reference_group(runs, reference, controls)
    values = {}
    for run in runs:
        if run.samples is None:
            continue
        anchors = [anchor for anchor in group if anchor is not run and anchor.same_images(run)]
        other_seed = [anchor for anchor in anchors if seed_of(anchor) != seed_of(run)]
        chosen = other_seed or anchors[:1]
        if chosen and (found := compared(run, chosen, bool(other_seed))) is not None:
            values[id(run)] = found
    return values


@dataclass
class Floor:
    """The seed-to-seed floor: every pair of the reference's seeds with its intervals, and per
    sample the mean over the pairs (what a run is tested against)."""

    reference: str
    split: str
    runs: list[Run]
    pairs: list[dict[str, Any]]
    pooled: SameNoise

    def as_json(self) -> dict[str, Any]:
        def summary(key: str) -> dict[str, float]:
            values = [pair[key]["value"] for pair in self.pairs]
            return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    "min": float(np.min(values)), "max": float(np.max(values))}

        return {
            "reference": self.reference,
            "split": self.split,
            "runs": [run.name for run in self.runs],
            "pairs": self.pairs,
            "pooled": {"r2": self.pooled.r2_interval().as_dict(), "agreement": self.pooled.agreement_interval().as_dict()},
            "agreement": summary("agreement"),
            "r2": summary("r2"),
        }


def seed_floor(runs: list[Run], reference: str | None, controls: list[str]) -> Floor | None:
    """The seed-to-seed floor between every two of the reference and its ``controls`` (the same
    configuration trained with other seeds on the same images, sampled from the same seeds);
    None without controls."""
    if not reference or not controls:
        return None
    unknown = [name for name in controls if not any(run.name == name for run in runs)]
    if unknown:
        raise UserError(
            f"controls: {', '.join(unknown)} not among the report's runs ({', '.join(sorted({r.name for r in runs}))}); "
            "name the variants of the reference trained with other seeds (e.g. variant=paper_seed1 seed=1 data.seed=0 "
            "sample_seed=0)"
        )
    group = reference_group(runs, reference, controls)
    for anchor in (run for run in group if run.name == reference):
        members = [anchor, *(run for run in group if run.name in controls and run.same_images(anchor))]
        pairs, per_pair = [], []
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                found = compared(b, [a], seed_of(a) != seed_of(b))
                if found is None:
                    raise UserError(
                        f"the seed control {b.name} ({b.location}) was not sampled from the seeds of {a.name} "
                        f"({a.location}); train it with sample_seed={a.config.get('sample_seed', a.config.get('seed'))}"
                    )
                per_pair.append(found)
                pairs.append({"a": a.name, "b": b.name, "agreement": found.agreement_interval().as_dict(),
                              "r2": found.r2_interval().as_dict()})
        if pairs:
            pooled = SameNoise(torch.stack([p.r2 for p in per_pair]).mean(dim=0),
                               torch.stack([p.cosine for p in per_pair]).mean(dim=0),
                               [name for p in per_pair for name in p.pairs], True)
            return Floor(reference, anchor.split, members, pairs, pooled)
    raise UserError(
        f"controls={controls}: none was trained on the images of a {reference} run with samples; train them "
        "with data.seed fixed to the reference's (data.seed=0) so only the training seed differs"
    )


def beyond_floor(run: Run, comparison: SameNoise | None, floor: Floor | None) -> tuple[str | None, Interval | None]:
    """"control" for the floor's own runs; for a run on the floor's images compared across seeds,
    "yes" when the paired difference of its median r^2 and the floor's has an interval wholly
    below 0, else "no", with that interval; None where no such test can be read."""
    if floor is None:
        return None, None
    if any(run is member for member in floor.runs):
        return "control", None
    if comparison is None or not comparison.cross_seed or not run.same_images(floor.runs[0]):
        return None, None
    if comparison.r2.shape != floor.pooled.r2.shape:
        return None, None
    difference = paired_difference(comparison.r2, floor.pooled.r2)
    return ("yes" if difference.high < 0 else "no"), difference
