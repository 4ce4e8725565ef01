"""Issue #22: each row's verdict is computed from its intervals, in a fixed order of precedence."""

import pytest
import yaml

from conftest import REPO
from lightning_diff.metrics.explanation import family_of
from lightning_diff.metrics.intervals import Interval
from lightning_diff.metrics.verdicts import VERDICTS, verdict, verdicts
from lightning_diff.run.study import Run


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


def test_verdicts_are_counted_by_half_seed_and_kind():
    trained = {"trained": True}
    table = [{**REFERENCE, **trained, "seed": 0}, {**row("a", "yes", kid=(0.05, 0.01)), **trained},
             {**row("a", "no"), **trained, "seed": 0}, {**row("linear", "yes"), "seed": 0},
             {**row("training images", None), "family": None, "seed": 0}]
    groups = verdicts(table, "paper")["counts_by_group"]
    assert list(groups) == ["half_a, seed 0, data", "half_a, seed 0, fitted", "half_a, seed 0, trained",
                            "half_a, seed 1, trained"]
    assert groups["half_a, seed 0, trained"]["control"] == 1 and groups["half_a, seed 0, trained"]["same generator"] == 1
    assert groups["half_a, seed 1, trained"]["differs, less realistic"] == 1
    assert groups["half_a, seed 0, fitted"]["differs"] == 1 and groups["half_a, seed 0, data"]["data"] == 1


@pytest.mark.parametrize("path", sorted((REPO / "conf" / "denoiser").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_denoiser_has_a_family_so_no_model_is_judged_to_be_the_data(path):
    # A family of None is what marks the training images' row ("data"); bottleneck's image
    # builder (build_image) once had none, and the study called its three rows "data".
    target = yaml.safe_load(path.read_text())["_target_"]
    family = family_of(Run(path.stem, "half_a", {"denoiser": {"_target_": target}}, "runs/x"))
    assert family == target.split(".")[2]
    assert family_of(Run("training images", "half_a", {"variant": "training images"}, "runs/data")) is None
