"""The study's table: one row of raw values per run (an :class:`~lightning_diff.metrics.intervals.Interval`
where a value has one), read off the runs, their explanations, the seed floor and the same-noise
comparisons with the reference across training seeds. ``python -m lightning_diff.report`` writes it.
"""

from typing import Any

from lightning_diff.metrics.declared import measured_columns
from lightning_diff.metrics.explanation import family_of
from lightning_diff.metrics.intervals import Interval
from lightning_diff.metrics.same_noise import Floor, SameNoise, agreements, beyond_floor, reference_comparisons
from lightning_diff.run.study import CONVERGENCE_TOLERANCE, Run, convergence

FIXED_COLUMNS = (
    "variant",
    "split",
    "seed",
    "num_parameters",
    "val_loss",
    "val_loss_per_level",
    "val_fall_last_quarter",
    "converged",
    "val_rise_last_quarter",
    "overfitting",
    "memorized_fraction",
    "d1_median",
)
TRAILING_COLUMNS = (
    "agreement",
    "vs_reference",
    "r2_vs_reference",
    "reference_pairs",
    "floor_difference",
    "beyond_floor",
    "verdict",
    "wall_time_s",
    "run",
)
HEADINGS = {
    "variant": "variant",
    "split": "data",
    "seed": "training seed",
    "num_parameters": "parameters",
    "val_loss": "val loss",
    "val_loss_per_level": "val loss per level (low t first)",
    "val_fall_last_quarter": "largest fall of a level's val loss over the last quarter",
    "val_rise_last_quarter": "largest rise of a level's val loss over the last quarter",
    "converged": "converged (no level still falls by the tolerance)",
    "overfitting": "overfitting (a level rose by the tolerance)",
    "memorized_fraction": "memorized [95% exact]",
    "d1_median": "median d1",
    "agreement": "two-model agreement [95%]",
    "vs_reference": "same-noise agreement with the reference [95%]",
    "r2_vs_reference": "same-noise r2 with the reference [95%]",
    "reference_pairs": "pairs compared with the reference",
    "floor_difference": "median r2 minus the floor's [95%, paired]",
    "beyond_floor": "differs beyond the seed floor",
    "verdict": "verdict",
    "wall_time_s": "wall time (s)",
    "run": "run",
}
def explanation_columns(explained: dict[int, dict[str, Any]]) -> list[str]:
    """``r2 vs <explainer>`` for every explainer, ``removes <machine>`` for every machine, the best."""
    if not explained:
        return []
    explainers = sorted({name for result in explained.values() for name in result["r2_median"]})
    machines = sorted({name for result in explained.values() for name in result.get("removes", {})})
    return [*(f"r2 vs {name}" for name in explainers), *(f"removes {name}" for name in machines), "best explanation"]


def explanation_cells(result: dict[str, Any] | None, columns: list[str]) -> dict[str, Any]:
    """The row's explanation cells: medians with their intervals; a score of a machine on the seeds
    that calibrated it is marked in-sample in the best explanation's cell."""
    cells: dict[str, Any] = dict.fromkeys(columns)
    if result is None:
        return cells
    for name, value in result["r2_interval"].items():
        cells[f"r2 vs {name}"] = Interval(**value)
    for name, value in result.get("removes_interval", {}).items():
        cells[f"removes {name}"] = Interval(**value)
    in_sample = result.get("in_sample") or []
    cells["best explanation"] = result["best_explanation"] + (f" (in-sample: {', '.join(in_sample)})" if in_sample else "")
    return cells


def floor_row(columns: list[str], floor: Floor) -> dict[str, Any]:
    """The table's row for the seed-to-seed floor: per sample the mean over its seed pairs, with intervals."""
    row: dict[str, Any] = dict.fromkeys(columns)
    row.update(
        variant=f"seed-to-seed floor ({floor.reference} x {len(floor.runs)} seeds)",
        split=floor.split,
        vs_reference=floor.pooled.agreement_interval(),
        r2_vs_reference=floor.pooled.r2_interval(),
        reference_pairs=f"{len(floor.pairs)} seed pairs (seed_floor.json)",
    )
    return row


def memorized(measure: dict[str, float]) -> Interval | float | None:
    """The memorized fraction with its exact interval (recorded, or from the fraction and the sample count)."""
    fraction = measure.get("memorized_fraction")
    if fraction is None:
        return None
    if "memorized_fraction_low" in measure and "memorized_fraction_high" in measure:
        return Interval(fraction, measure["memorized_fraction_low"], measure["memorized_fraction_high"])
    return fraction


def rows(
    runs: list[Run],
    reference: str | None = None,
    explained: dict[int, dict[str, Any]] | None = None,
    tolerance: float = CONVERGENCE_TOLERANCE,
    floor: Floor | None = None,
    agreement: dict[int, Interval] | None = None,
    controls: list[str] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The table's columns and one row of raw values per run (None where a value is missing;
    an :class:`Interval` where a value has one), and with a seed ``floor`` a last row holding it.
    ``agreement``: the halves' agreements when the caller has them already
    (:func:`~lightning_diff.metrics.same_noise.agreements`)."""
    explained = explained or {}
    explaining = explanation_columns(explained)
    fids = measured_columns(runs, shown=FIXED_COLUMNS)
    agreement = agreements(runs) if agreement is None else agreement
    vs_reference = reference_comparisons(runs, reference, list(controls or []))
    table = []
    for run in runs:
        last_quarter = convergence(run, tolerance)
        row = {
            "variant": run.name,
            "split": run.split,
            "seed": run.config.get("seed"),
            "family": family_of(run),  # None for the data's reference row (no denoiser)
            "trained": (run.config.get("denoiser") or {}).get("fit") == "sgd",  # else fitted in closed form
            "num_parameters": run.num_parameters,
            "val_loss": run.val_loss,
            "val_loss_per_level": run.val_losses or None,
            "val_fall_last_quarter": last_quarter.fall,
            "converged": last_quarter.converged,
            "val_rise_last_quarter": last_quarter.rise,
            "overfitting": last_quarter.overfitting,
            "memorized_fraction": memorized(run.measure),
            "d1_median": run.measure.get("d1_median"),
        }
        row.update({key: run.measure.get(key) for key in fids})
        row.update(explanation_cells(explained.get(id(run)), explaining))
        comparison = vs_reference.get(id(run))
        beyond, difference = beyond_floor(run, comparison, floor)
        row.update(
            {
                "agreement": agreement.get(id(run)),
                "vs_reference": comparison.agreement_interval() if comparison else None,
                "r2_vs_reference": comparison.r2_interval() if comparison else None,
                "reference_pairs": reference_pairs(comparison),
                "floor_difference": difference,
                "beyond_floor": beyond,
                "wall_time_s": run.wall_time_s,
                "run": run.location,
            }
        )
        table.append(row)
    columns = [*FIXED_COLUMNS, *fids, *explaining, *TRAILING_COLUMNS]
    if floor is not None:
        table.append(floor_row(columns, floor))
    return columns, table


def reference_pairs(comparison: SameNoise | None) -> str | None:
    if comparison is None:
        return None
    pairs = "; ".join(comparison.pairs)
    return pairs if comparison.cross_seed else f"same training seed only: {pairs}"
