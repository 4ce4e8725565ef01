"""Issue #22: each row's verdict is computed from its intervals, in a fixed order of precedence."""

import pytest

from lightning_diff.metrics.intervals import Interval
from lightning_diff.metrics.verdicts import VERDICTS, verdict, verdicts


def row(variant: str, beyond: str | None, memorized: Interval | float | None = None, kid=None) -> dict:
    found = {"variant": variant, "split": "half_a", "seed": 1, "family": "unet", "beyond_floor": beyond,
             "memorized_fraction": memorized}
    if kid is not None:
        found["kid@256"], found["kid_std@256"] = kid
    return found


REFERENCE = row("paper", "control", kid=(0.010, 0.002))


@pytest.mark.parametrize(
    "case, expected",
    [
        (row("x", "yes", Interval(0.05, 0.01, 0.1)), "copies"),  # copying wins over everything
        (row("x", "no", Interval(0.0, 0.0, 0.014)), "same generator"),  # 0 of 256 still allows 1.4%: not copying
        (row("x", "yes", kid=(0.020, 0.003)), "differs, less realistic"),  # 0.017 > 0.012
        (row("x", "yes", kid=(0.014, 0.003)), "differs"),  # KID intervals overlap: not shown less realistic
        (row("x", "yes"), "differs"),  # no KID measured
        (row("x", "control"), "control"),
        (row("x", None), "undetermined"),
        ({**row("training images", None, Interval(1.0, 0.98, 1.0)), "family": None}, "data"),  # not a copier
    ],
)
def test_each_verdict_follows_from_the_intervals(case, expected):
    assert verdict(case, REFERENCE)[0] == expected


def test_verdicts_are_counted_and_written_into_the_rows():
    table = [REFERENCE, row("a", "yes", kid=(0.05, 0.01)), row("b", "no"), row("c", None)]
    judged = verdicts(table, "paper")
    assert [entry["verdict"] for entry in judged["rows"]] == ["control", "differs, less realistic", "same generator",
                                                               "undetermined"]
    assert [r["verdict"] for r in table] == [entry["verdict"] for entry in judged["rows"]]
    assert list(judged["counts"]) == list(VERDICTS) and sum(judged["counts"].values()) == 4
    assert judged["counts"]["differs, less realistic"] == 1 and judged["counts"]["copies"] == 0
