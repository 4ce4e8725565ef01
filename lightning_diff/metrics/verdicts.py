"""Verdicts computed from intervals, so the reading of a study quotes numbers instead of writing them.

Per run, in this order (the first that holds):

- ``data``: the training images measured as samples (``evaluate training_images=N as_run=DIR``):
  the reference row every realism number is read against, not a generator;
- ``copies``: the lower end of the memorized fraction's exact 95% interval is above 0 (at least
  one sample copies a training image, beyond doubt at that level);
- ``control``: the run is one of the reference's seed controls (the floor itself);
- ``differs, less realistic``: beyond the seed floor (:func:`~lightning_diff.metrics.same_noise.beyond_floor`)
  and its KID interval (mean ± std over subsets) lies wholly above the reference's;
- ``differs``: beyond the seed floor;
- ``same generator``: compared across training seeds, its r^2 with the reference is not below the
  floor's (the paired interval reaches 0 or above);
- ``undetermined``: none of these can be read (no cross-seed comparison with the reference, no
  floor, or a run on other images); the reason says which.
"""

from collections import Counter
from collections.abc import Mapping
from typing import Any

VERDICTS = ("data", "copies", "control", "differs, less realistic", "differs", "same generator", "undetermined")


def kid_interval(row: Mapping[str, Any]) -> tuple[float, float] | None:
    """(mean - std, mean + std) of the row's KID (``kid@<n>`` and ``kid_std@<n>``), or None."""
    for key, mean in row.items():
        if key.startswith("kid@") and isinstance(mean, float):
            std = row.get(key.replace("kid@", "kid_std@", 1))
            if isinstance(std, float):
                return mean - std, mean + std
    return None


def verdict(row: Mapping[str, Any], reference_row: Mapping[str, Any] | None) -> tuple[str, str]:
    """The row's verdict and the reason in words. ``row`` holds ``memorized_fraction`` (an
    :class:`~lightning_diff.metrics.intervals.Interval` where its exact interval is known),
    ``beyond_floor`` ("yes", "no", "control" or None) and KID keys; ``reference_row`` is the
    reference's row on the same images (for KID), or None."""
    if row.get("family") is None:
        return "data", "the training images themselves: the reference row (memorized 1 by definition)"
    low = getattr(row.get("memorized_fraction"), "low", None)
    if low is not None and low > 0:
        return "copies", f"memorized fraction's 95% interval starts at {low:.3g} > 0"
    beyond = row.get("beyond_floor")
    if beyond == "control":
        return "control", "a seed control of the reference: the floor itself"
    if beyond == "yes":
        ours, theirs = kid_interval(row), kid_interval(reference_row or {})
        if ours is not None and theirs is not None and ours[0] > theirs[1]:
            return "differs, less realistic", (
                f"r2 with the reference below the seed floor; KID {ours[0]:.3g}..{ours[1]:.3g} above the reference's "
                f"{theirs[0]:.3g}..{theirs[1]:.3g}"
            )
        return "differs", "r2 with the reference below the seed floor (paired interval wholly below 0)"
    if beyond == "no":
        return "same generator", "r2 with the reference within the seed floor (paired interval reaches 0)"
    return "undetermined", "no cross-seed comparison with the reference on the floor's images"


def group_of(row: Mapping[str, Any]) -> str:
    """Where a row is counted in ``counts_by_group``: its data half, training seed and whether it was
    trained (``half_a, seed 1, trained``), so a reading can quote how many trained changes at one
    seed got each verdict without adding the fitted families and the data to them."""
    kind = "data" if row.get("family") is None else "trained" if row.get("trained") else "fitted"
    return f"{row['split']}, seed {row.get('seed')}, {kind}"


def counted(entries: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(entry["verdict"] for entry in entries)
    return {name: counts.get(name, 0) for name in VERDICTS}


def verdicts(table: list[dict[str, Any]], reference: str | None) -> dict[str, Any]:
    """Each row's verdict (added to the rows as ``verdict``) and their counts, for verdicts.json:
    over every row, and by group (:func:`group_of`)."""
    found = []
    for row in table:
        same_images = [other for other in table if other["variant"] == reference and other["split"] == row["split"]]
        row["verdict"], reason = verdict(row, same_images[0] if same_images else None)
        found.append({"variant": row["variant"], "split": row["split"], "seed": row.get("seed"),
                      "group": group_of(row), "verdict": row["verdict"], "reason": reason})
    groups = sorted({entry["group"] for entry in found})
    return {"rows": found, "counts": counted(found),
            "counts_by_group": {group: counted([e for e in found if e["group"] == group]) for group in groups}}
