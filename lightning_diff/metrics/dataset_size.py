"""The memorization-to-generalization transition of one architecture: the same trained
variant at several training-set sizes N (``data.num_train``), each on both disjoint halves,
beside the empirical (copying) denoiser of the same images."""

from typing import Any

import numpy as np

from lightning_diff.metrics.explanation import family_of
from lightning_diff.metrics.intervals import Interval
from lightning_diff.run.study import Run


def dataset_size_rows(
    runs: list[Run], explained: dict[int, dict[str, Any]], agreement: dict[int, Interval]
) -> list[dict[str, Any]]:
    """For every trained variant run at two or more training-set sizes (``data.num_train``): per N
    the memorized fraction and the median r^2 to the empirical denoiser (each the mean over the
    variant's runs at that N: both halves when both were run) and the two-model agreement of the
    halves with its interval (``agreement``: :func:`~lightning_diff.metrics.same_noise.agreements` of ``runs``),
    beside the same agreement of the empirical denoiser's halves at that N: what copying scores there
    (its two halves share no image, so it falls as N shrinks). The memorization-to-generalization
    transition of that architecture."""
    empirical = {run.name for run in runs if family_of(run) == "empirical"}
    copying: dict[int, Interval] = {}
    by_variant: dict[str, dict[int, list[Run]]] = {}
    for run in runs:
        size = (run.config.get("data") or {}).get("num_train")
        if size is None:
            continue
        if run.name in empirical and id(run) in agreement:
            copying.setdefault(int(size), agreement[id(run)])
        if (run.config.get("denoiser") or {}).get("fit") == "sgd":
            by_variant.setdefault(run.name, {}).setdefault(int(size), []).append(run)
    table = []
    for variant, by_size in by_variant.items():
        if len(by_size) < 2:
            continue
        for size, group in sorted(by_size.items()):
            memorized = [run.measure["memorized_fraction"] for run in group if "memorized_fraction" in run.measure]
            r2 = [
                value
                for run in group
                for name, value in (explained.get(id(run)) or {}).get("r2_median", {}).items()
                if name in empirical
            ]
            pair = [agreement[id(run)] for run in group if id(run) in agreement]
            table.append(
                {
                    "variant": variant,
                    "N": size,
                    "memorized": float(np.mean(memorized)) if memorized else None,
                    "two-model agreement": pair[0] if pair else None,
                    "empirical's two-model agreement": copying.get(size),
                    "r2 vs empirical": float(np.mean(r2)) if r2 else None,
                    "runs": len(group),
                }
            )
    return table
