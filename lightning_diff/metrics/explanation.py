"""What explains a trained network's samples: same-noise r^2 against analytic machines, judged
against baselines that explain nothing.

Same-noise r^2 is high even for models that share only the coarse structure fixed at high
noise: a converged paper UNet against the empirical (copying) denoiser from the same seeds
scores ~0.86. So each trained run of a study (``denoiser.fit=sgd``) is compared, from the same
seeds, with

- the **machines**: runs of the analytic families (``local_score``, ``pca_locality``) or runs
  named in ``machines=[...]``;
- the **baselines**: closed-form runs of ``linear``, ``empirical`` and ``nearest``.

Per trained run T and explainer E: the median over samples of r^2 (T the reference,
:mod:`lightning_diff.metrics.r2`) and of Pearson r; for each machine M, the share of the best
baseline's error it removes, ``1 - SSE_i(M) / SSE_i(B)`` per sample i (B: the baseline with the
highest median r^2; the median over samples), and the same per level on each model's x0
prediction along its own trajectory from the same noise (runs with checkpoints); and the best
explanation, the explainer with the highest median r^2. Explainers are paired with a trained
run only on the same training images (dataset, N, data seed, half), with the same seeds and
sample shape. Every median has its 95% bootstrap interval over samples (``r2_interval``,
``removes_interval``: {value, low, high}).

A calibrated machine (its config's ``calibrated_on``: the calibration seeds' recipe) scored on
any seed that chose its knobs is named in ``in_sample``: such a score is not a held-out one.
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_diff.errors import UserError
from lightning_diff.metrics.intervals import bootstrap
from lightning_diff.metrics.r2 import per_sample_pearson, per_sample_r2, per_sample_sse
from lightning_diff.run.study import Run
from lightning_diff.seeding import calibration_seeds

MACHINE_FAMILIES = ("local_score", "pca_locality")
BASELINE_FAMILIES = ("linear", "empirical", "nearest")


def family_of(run: Run) -> str | None:
    """The denoiser family of a run: the module of its builder, ``_target_`` =
    ``lightning_diff.denoisers.<family>.<builder>`` (``build``, or e.g. bottleneck's ``build_image``).
    None only for a run without a denoiser: the training images' reference row."""
    target = str((run.config.get("denoiser") or {}).get("_target_", ""))
    parts = target.split(".")
    return parts[-2] if len(parts) >= 2 else None


def role(run: Run, named_machines: set[str]) -> str | None:
    """``trained``, ``machine``, ``baseline`` or None (a closed-form run that is neither)."""
    fit = (run.config.get("denoiser") or {}).get("fit")
    if run.name in named_machines or family_of(run) in MACHINE_FAMILIES:
        return "machine"
    if fit == "sgd":
        return "trained"
    return "baseline" if family_of(run) in BASELINE_FAMILIES else None


@dataclass
class Generated:
    """A run's samples and, with a checkpoint, its x0 prediction per level (highest noise first)."""

    samples: Tensor
    seeds: np.ndarray
    trajectory: Tensor | None


def comparable(a: Generated, b: Generated) -> bool:
    return np.array_equal(a.seeds, b.seeds) and a.samples.shape == b.samples.shape


def median(values: Tensor) -> float:
    return float(values.nanquantile(0.5))


def explain_one(trained: Generated, explainers: dict[str, tuple[str, Generated]]) -> dict[str, Any]:
    """The explanation of one trained run by its explainers (name -> (role, generated))."""
    per_sample = {name: per_sample_r2(trained.samples, e.samples) for name, (_, e) in explainers.items()}
    r2 = {name: median(values) for name, values in per_sample.items()}
    result: dict[str, Any] = {
        "r2_median": r2,
        "r2_interval": {name: bootstrap(values).as_dict() for name, values in per_sample.items()},
        "pearson_r_median": {n: median(per_sample_pearson(trained.samples, e.samples)) for n, (_, e) in explainers.items()},
        "best_explanation": max(r2, key=r2.__getitem__),
    }
    baselines = [name for name, (kind, _) in explainers.items() if kind == "baseline"]
    if not baselines:
        return result
    best = max(baselines, key=r2.__getitem__)
    result["best_baseline"] = best
    result["removes"], result["removes_interval"], result["removes_per_level"] = {}, {}, {}
    floor = explainers[best][1]
    for name, (kind, machine) in explainers.items():
        if kind != "machine":
            continue
        share = removed(trained.samples, machine.samples, floor.samples)
        result["removes"][name] = median(share)
        result["removes_interval"][name] = bootstrap(share).as_dict()
        if trained.trajectory is not None and machine.trajectory is not None and floor.trajectory is not None:
            result["removes_per_level"][name] = [
                median(removed(t, m, f)) for t, m, f in zip(trained.trajectory, machine.trajectory, floor.trajectory)
            ]
    return result


def removed(reference: Tensor, machine: Tensor, baseline: Tensor) -> Tensor:
    """Per sample, 1 - SSE(machine) / SSE(baseline) against ``reference`` (NaN where the baseline is exact)."""
    floor = per_sample_sse(reference, baseline)
    share = 1.0 - per_sample_sse(reference, machine) / floor.clamp_min(1e-300)
    return torch.where(floor > 0, share, torch.full_like(share, float("nan")))


def explanations(
    runs: list[Run], named_machines: set[str], generate: Callable[[Run], Generated | None]
) -> dict[int, dict[str, Any]]:
    """The explanation of every trained run that has machines or baselines to compare with, by
    ``id(run)``; ``generate`` gives what a run generated (None without samples on this machine)."""
    roles = {id(run): role(run, named_machines) for run in runs}
    if not any(kind in ("machine", "baseline") for kind in roles.values()):
        return {}
    cache: dict[int, Generated | None] = {}

    def of(run: Run) -> Generated | None:
        if id(run) not in cache:
            print(f"explain: sampling trajectories of {run.name} ({run.location})", file=sys.stderr, flush=True)
            cache[id(run)] = generate(run)
        return cache[id(run)]

    found = {}
    for run in runs:
        if roles[id(run)] != "trained" or of(run) is None:
            continue
        trained = of(run)
        assert trained is not None
        explainers = {
            other.name: other
            for other in runs
            if roles[id(other)] in ("machine", "baseline") and other.same_images(run)
        }
        usable = {
            name: (roles[id(other)], of(other))
            for name, other in explainers.items()
            if of(other) is not None and comparable(trained, of(other))
        }
        if usable:
            found[id(run)] = explain_one(trained, usable)
            found[id(run)]["in_sample"] = [name for name in usable if chose_on(explainers[name], trained.seeds)]
    return found


def chose_on(machine: Run, seeds: np.ndarray) -> bool:
    """Whether ``machine``'s knobs were calibrated on any of ``seeds`` (its ``calibrated_on`` record)."""
    record = machine.config.get("calibrated_on")
    if not record:
        return False
    if not isinstance(record, dict) or not all(isinstance(record.get(key), int) for key in ("seed", "num_samples")):
        raise UserError(
            f"{machine.location}: calibrated_on={record!r} is not a calibration record ({{seed, num_samples}}, as "
            "calibrate's overrides.txt writes it); train the machine again with those overrides"
        )
    chosen = calibration_seeds(record["seed"], record["num_samples"])
    return bool(set(chosen) & {int(seed) for seed in seeds})
