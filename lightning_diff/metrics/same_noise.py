"""Runs compared sample by sample from the same seeds: the two-model agreement of a variant's
two halves (Kadkhodaie et al.), each run's agreement and r^2 with a reference run, and the
seed-to-seed floor those numbers are read against (the reference trained with other seeds).

Agreement is :class:`~lightning_diff.metrics.agreement.TwoModelAgreement`'s mean cosine of
mean-removed samples; r^2 is the median over samples of
:func:`~lightning_diff.metrics.r2.per_sample_r2` with the reference's sample as the reference.
"""

from typing import Any

import numpy as np

from lightning_diff.errors import UserError
from lightning_diff.metrics.agreement import TwoModelAgreement
from lightning_diff.metrics.r2 import per_sample_r2
from lightning_diff.run.study import Run, halves, load_samples


def agreements(runs: list[Run]) -> dict[int, float]:
    """Two-model agreement (mean cosine) of each run that has its other half, by ``id(run)``."""
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
        metric = TwoModelAgreement()
        metric.update(samples_a, samples_b)
        values[id(a)] = values[id(b)] = float(metric.compute()["agreement_cosine_mean"])
    return values


def same_noise(run: Run, anchor: Run) -> tuple[float, float] | None:
    """Agreement (mean cosine) and median per-sample r^2 of ``run``'s samples against ``anchor``'s
    from the same seeds; None when they were sampled from other seeds or at another shape."""
    if run.samples is None or anchor.samples is None:
        return None
    samples, seeds = load_samples(run.samples)
    anchor_samples, anchor_seeds = load_samples(anchor.samples)
    if not np.array_equal(seeds, anchor_seeds) or samples.shape != anchor_samples.shape:
        return None
    metric = TwoModelAgreement()
    metric.update(samples, anchor_samples)
    r2 = float(per_sample_r2(anchor_samples, samples).quantile(0.5))
    return float(metric.compute()["agreement_cosine_mean"]), r2


def reference_agreements(runs: list[Run], reference: str | None) -> dict[int, tuple[float, float]]:
    """Same-noise agreement and r^2 (:func:`same_noise`) of each run with the run named ``reference``
    on the same training images, by ``id(run)``: what each change makes of the same noise."""
    anchors = [run for run in runs if reference and run.name == reference and run.samples is not None]
    values = {}
    for run in runs:
        anchor = next((a for a in anchors if a.same_images(run)), None)
        if anchor is not None and (found := same_noise(run, anchor)) is not None:
            values[id(run)] = found
    return values


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def seed_floor(runs: list[Run], reference: str | None, controls: list[str]) -> dict[str, Any] | None:
    """The seed-to-seed floor: same-noise agreement and r^2 between every two of the reference and
    its ``controls`` (the same configuration trained with other seeds on the same images and sampled
    from the same seeds), as mean, sd, min and max over the pairs; None without two such runs.
    A change of the reference alters what the network generates beyond training noise only when
    its r^2 with the reference falls below this floor's minimum."""
    if not reference or not controls:
        return None
    unknown = [name for name in controls if not any(run.name == name for run in runs)]
    if unknown:
        raise UserError(
            f"controls: {', '.join(unknown)} not among the report's runs ({', '.join(sorted({r.name for r in runs}))}); "
            "name the variants of the reference trained with other seeds (e.g. variant=paper_seed1 seed=1 data.seed=0 "
            "sample_seed=0)"
        )
    for anchor in (run for run in runs if run.name == reference and run.samples is not None):
        group = [anchor, *(r for r in runs if r.name in controls and r.same_images(anchor) and r.samples is not None)]
        pairs = []
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                found = same_noise(b, a)
                if found is None:
                    raise UserError(
                        f"the seed control {b.name} ({b.location}) was not sampled from the seeds of {a.name} "
                        f"({a.location}); train it with sample_seed={a.config.get('sample_seed', a.config.get('seed'))}"
                    )
                pairs.append({"a": a.name, "b": b.name, "agreement": found[0], "r2": found[1]})
        if pairs:
            return {
                "reference": reference,
                "split": anchor.split,
                "runs": [run.name for run in group],
                "pairs": pairs,
                "agreement": spread([pair["agreement"] for pair in pairs]),
                "r2": spread([pair["r2"] for pair in pairs]),
            }
    raise UserError(
        f"controls={controls}: none was trained on the images of a {reference} run with samples; train them "
        "with data.seed fixed to the reference's (data.seed=0) so only the training seed differs"
    )


def beyond_floor(run: Run, r2: float | None, floor: dict[str, Any] | None) -> str | None:
    """"control" for the floor's own runs; else "yes" when the run's same-noise r^2 with the
    reference is below the lowest seed-to-seed r^2, "no" when not, None without a floor or r^2."""
    if floor is None:
        return None
    if run.name in floor["runs"]:
        return "control"
    if r2 is None:
        return None
    return "yes" if r2 < floor["r2"]["min"] else "no"
