"""Issue 24: the local score benchmarks' code paths at their tiny sizes, and the released peer's loader.

The released code itself (Kamb & Ganguli's idealscore.py) is not in this repository: the test that
runs it skips unless ELS_REFERENCE names a folder holding it (benchmarks/README.md).
"""

import math
import os
from pathlib import Path

import pytest
import torch

from benchmarks import local_score, local_score_scale
from benchmarks.registry import Config
from benchmarks.released_local_score import (
    ENVIRONMENT,
    equal_batch_size,
    load_reference,
    released_levels,
)
from benchmarks.run_phases import measurement_share


def tiny(module) -> Config:
    return Config(torch.device("cpu"), "tiny", dict(module.SIZES["tiny"]))


def test_missing_reference_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such directory"):
        load_reference(tmp_path / "absent")
    with pytest.raises(SystemExit, match="holds no idealscore.py"):
        load_reference(tmp_path)


def test_reference_without_the_machines_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "idealscore.py").write_text("def cosine_noise_schedule(t):\n    return t\n")
    with pytest.raises(SystemExit, match="defines no ScheduledScoreMachine, LocalEquivScoreModule"):
        load_reference(tmp_path)


def test_reference_whose_constructor_fails_is_a_clear_error(tmp_path: Path) -> None:
    # The shape of the released file at commits 4aebaba and d2335d9: __init__ reads a name it lost.
    (tmp_path / "idealscore.py").write_text(
        "import math\nimport torch\n"
        "def cosine_noise_schedule(t):\n    return 1 - torch.cos(t / 1.008 * math.pi / 2) ** 2\n"
        "class ScheduledScoreMachine:\n    pass\n"
        "class LocalEquivScoreModule:\n    def __init__(self, **kwargs):\n        self.padding = padding\n"
        "LocalEquivBordersScoreModule = LocalScoreModule = LocalEquivScoreModule\n"
    )
    with pytest.raises(SystemExit, match="building the released LocalEquivScoreModule failed.*use commit"):
        load_reference(tmp_path)


def test_released_grid_and_batches() -> None:
    # beta(s) = 1 - cos^2(pi/2 s / 1.008) at s = 0.1, ..., 0.9, ascending.
    levels = released_levels()
    assert len(levels) == 9
    assert levels[0] == pytest.approx(1 - math.cos(math.pi / 2 * 0.1 / 1.008) ** 2, abs=1e-12)
    assert levels[-1] == pytest.approx(1 - math.cos(math.pi / 2 * 0.9 / 1.008) ** 2, abs=1e-12)
    assert levels == sorted(levels)
    assert equal_batch_size(1000) == 250 and equal_batch_size(20) == 20


def test_local_score_tiny_without_the_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    rows = local_score.run(tiny(local_score))
    released = [row for row in rows if "released grid" in row.case]
    assert len(released) == 3
    for row, kind in zip(released, ("ELS", "bbELS", "LS")):
        assert row.case.endswith(f"[{kind}]")
        assert row.peer is None and row.note.startswith("peer not run") and row.ours > 0


def test_recorded_figure_is_labelled_as_recorded() -> None:
    row = local_score.unrun_peer_row("case", "ELS", 0.3, local_score.RELEASED_TARGET, local_score.RECORDED_CASE)
    assert row.peer == local_score.RECORDED_RELEASED_S["ELS"]
    assert "recorded" in row.peer_name and local_score.RECORDED_ON in row.note and "peer not run" in row.note
    other_settings = dict(local_score.RECORDED_CASE, num_train=500)
    assert local_score.unrun_peer_row("case", "LS", 0.3, None, other_settings).peer is None


@pytest.mark.skipif(not os.environ.get(ENVIRONMENT), reason=f"{ENVIRONMENT} is unset (benchmarks/README.md)")
def test_local_score_tiny_beside_the_released_code() -> None:
    rows = [row for row in local_score.run(tiny(local_score)) if "released grid" in row.case]
    assert len(rows) == 3
    for row in rows:
        assert row.peer is not None and row.peer > 0 and "run here" in row.peer_name
        # The same posterior on the same levels: float32 rounding apart, one call and whole samples.
        assert row.extra["call_max_abs_diff"] < 1e-4, row.note
        assert row.extra["sample_max_abs_diff"] < 1e-3, row.note


@pytest.mark.parametrize("padding", ["circular", "zeros"])
def test_multiply_adds_count_every_pixel_against_each_of_its_candidates(padding: str) -> None:
    channels, side, num_train, size = 3, 7, 2, 3
    half = size // 2

    def key(i: int) -> int | str:  # the zero padding a patch centred at row (or column) i sees
        return "inside" if half <= i < side - half else i

    pixels = [(i, j) for i in range(side) for j in range(side)]
    if padding == "circular":
        positions = (side - size + 1) ** 2
        pairs = len(pixels) * positions
    else:
        pairs = sum(1 for i, j in pixels for k, m in pixels if key(i) == key(k) and key(j) == key(m))
    expected = pairs * num_train * channels * size * size
    assert local_score.multiply_adds((channels, side, side), num_train, [size], padding) == expected


def test_local_score_scale_tiny() -> None:
    rows = local_score_scale.run(tiny(local_score_scale))
    assert len(rows) == 5
    for row in rows[:2]:  # uniform images: always there
        assert row.ours > 0 and row.extra["peak_memory_gib"] > 0
    for row in rows[2:]:  # Fashion-MNIST: timed, or a row that says why not
        assert row.ours > 0 or row.note.startswith("not run")
    bounded = rows[-1]
    if bounded.ours > 0:  # the certified bound holds on the states the sampler passed it
        assert bounded.extra["measured_error"] <= bounded.extra["error_bound"] + 1e-5, bounded.note
        assert bounded.extra["error_bound"] <= bounded.extra["tolerance"] * 2, bounded.note


def test_measurement_share_counts_the_measurements_inside_fit_against_the_training_around_them() -> None:
    phases = {"fit (with the measuring callback)": 110.0, "measure (inside fit)": 10.0, "samples": 5.0, "total": 120.0}
    assert measurement_share(phases) == {"measurement_s": 15.0, "training_s": 100.0, "measurement_share_of_training": 0.15}
    assert measurement_share({"total": 1.0}) == {}  # a run that stopped before fitting has no share
