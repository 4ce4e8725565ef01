"""Issue #15, part: the study grid over several sittings (sweeps/study_parallel.sh with KEEP)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from lightning_diff.errors import UserError
from lightning_diff.run.study import keep_summary, runs_in_directory

TINY = [
    "data.num_train=24", "data.num_val=8", "diffusion.num_levels=3", "num_samples=4", "sampler.batch_size=4",
    "callbacks.measure.every_n_steps=0", "callbacks.measure.num_samples=4", "logger=none",
]


def study(out: Path, keep: Path, root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, KEEP=str(keep), PRESETS="empirical linear", OMP_NUM_THREADS="1")
    return subprocess.run(
        ["bash", str(REPO / "sweeps" / "study_parallel.sh"), str(out), "1", *TINY, f"data.root={root}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_a_grid_split_across_sittings_keeps_each_finished_run_and_reports_from_the_kept_copies(tmp_path, fashion_stand_in):
    keep = tmp_path / "docs_results_grid"
    first = study(tmp_path / "sitting1", keep, fashion_stand_in)
    assert first.returncode == 0, first.stderr
    assert "done   empirical" in first.stdout and "done   linear" in first.stdout
    for preset in ("empirical", "linear"):
        kept = json.loads((keep / preset / "run.json").read_text())
        assert kept == json.loads((tmp_path / "sitting1" / preset / "run.json").read_text())
        assert (keep / preset / "samples.npz").is_file() and not (keep / preset / "checkpoints").exists()
    assert (keep / "report.md").is_file()
    # Another sitting on another machine: the run directories are gone, the kept copies are not.
    shutil.rmtree(tmp_path / "sitting1")
    second = study(tmp_path / "sitting2", keep, fashion_stand_in)
    assert second.returncode == 0, second.stderr
    assert "kept   empirical (finished before)" in second.stdout and "done" not in second.stdout
    assert sorted(run.name for run in runs_in_directory(keep)) == ["empirical", "linear"]


def test_keeping_an_unfinished_run_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="holds no run.json: the run has not finished"):
        keep_summary(tmp_path / "run", tmp_path / "kept")
    assert not (tmp_path / "kept").exists()


def converged_study(out: Path, keep: Path, root: str, tolerance: str = "1e9") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, GRID="empirical", SIZES="12", CANDIDATES="[1,3]",
               TOLERANCE=tolerance, REFERENCE_IMAGES="8")
    overrides = [
        *TINY, f"data.root={root}", "unet_width=4", "trainer.max_steps=8", "trainer.val_check_interval=2",
        "callbacks.checkpoint_every_n_steps=4", "trainer.enable_progress_bar=false",
    ]
    return subprocess.run(
        ["bash", str(REPO / "sweeps" / "study_converged.sh"), str(out), str(keep), *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.slow
def test_the_converged_study_runs_halves_controls_machines_and_sizes_and_resumes_from_its_kept_summaries(
    tmp_path, fashion_stand_in
):
    keep = tmp_path / "kept"
    first = converged_study(tmp_path / "sitting1", keep, fashion_stand_in)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for half in ("half_a", "half_b"):
        for preset in ("paper", "empirical", "els", "ls"):
            kept = json.loads((keep / "grid" / half / preset / "run.json").read_text())
            assert kept["config"]["data"]["split"] == half and kept["config"]["variant"] == preset
    # The machines use the patch sizes calibrated against the paper UNet of half_a.
    calibrated = json.loads((keep / "calibration_els" / "calibration.json").read_text())["patch_sizes"]
    els = json.loads((keep / "grid" / "half_b" / "els" / "run.json").read_text())["config"]["denoiser"]
    assert els["patch_sizes"] == calibrated
    for seed in (1, 2):
        control = json.loads((keep / "grid" / f"controls_{seed}" / "paper" / "run.json").read_text())["config"]
        assert (control["variant"], control["seed"], control["data"]["seed"], control["sample_seed"]) == (
            f"paper_seed{seed}", seed, 0, 0)
    report = (keep / "grid" / "report.md").read_text()
    assert "seed-to-seed floor (paper x 3 seeds)" in report
    # Each half's training images, measured as samples, are the report's data row.
    for half in ("half_a", "half_b"):
        row = json.loads((keep / "grid" / half / "data" / "run.json").read_text())
        assert row["config"]["data"]["split"] == half and row["measure"]["num_samples"] == 8
    verdicts = json.loads((keep / "grid" / "verdicts.json").read_text())
    assert [entry["split"] for entry in verdicts["rows"] if entry["verdict"] == "data"] == ["half_a", "half_b"]
    sizes = json.loads((keep / "dataset_size" / "dataset_size.json").read_text())
    assert [(row["variant"], row["N"], row["runs"]) for row in sizes] == [("paper", 12, 2), ("paper", 24, 2)]
    assert all(row["two-model agreement"] is not None and row["r2 vs empirical"] is not None for row in sizes)
    assert (keep / "dataset_size" / "report_n.png").is_file() and (keep / "grid" / "half_a_report" / "report_floor.png").is_file()
    assert "sitting finished" in (keep / "wall_time.log").read_text()
    assert not list(keep.rglob("trained_longer"))  # every run counted as converged (TOLERANCE=1e9)
    # The next sitting, on a machine without the first one's run directories: nothing of the grid is
    # trained again, but with a tolerance no run meets, every trained run (grid and N sweep) is
    # trained again once with twice the steps, then once with four times that, and each replaces
    # its kept summary.
    shutil.rmtree(tmp_path / "sitting1")
    second = converged_study(tmp_path / "sitting2", keep, fashion_stand_in, tolerance="0")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "kept   paper (finished before)" in second.stdout and "done   paper (" not in second.stdout
    trained = ["controls_1/paper", "controls_2/paper", "half_a/paper", "half_b/paper"]
    for mark in ("trained_longer", "trained_8x"):
        retrained = sorted(str(path.parent.relative_to(keep / "grid")) for path in (keep / "grid").rglob(mark))
        assert retrained == trained, mark
        sizes = sorted(str(path.parent.relative_to(keep / "dataset_size")) for path in (keep / "dataset_size").rglob(mark))
        assert sizes == ["n_12/half_a/paper", "n_12/half_b/paper"], mark  # the grid's own size: copies, below
    longer = json.loads((keep / "grid" / "half_a" / "paper" / "run.json").read_text())["config"]
    assert longer["trainer"]["max_steps"] == 64 and longer["trainer"]["val_check_interval"] == 16  # 8 -> 16 -> 64
    assert longer["data"]["split"] == "half_a" and longer["variant"] == "paper"
    control = json.loads((keep / "grid" / "controls_1" / "paper" / "run.json").read_text())["config"]
    assert (control["variant"], control["seed"], control["sample_seed"], control["trainer"]["max_steps"]) == (
        "paper_seed1", 1, 0, 64)
    copy = keep / "dataset_size" / "grid" / "half_a" / "paper" / "run.json"
    assert copy.read_text() == (keep / "grid" / "half_a" / "paper" / "run.json").read_text()
    small = json.loads((keep / "dataset_size" / "n_12" / "half_b" / "paper" / "run.json").read_text())["config"]
    assert (small["data"]["num_train"], small["data"]["split"], small["trainer"]["max_steps"]) == (12, "half_b", 64)
    third = converged_study(tmp_path / "sitting3", keep, fashion_stand_in, tolerance="0")
    assert third.returncode == 0 and "done   " not in third.stdout  # each run is retrained twice at most
    # The study's wall time, the sum of its sittings, closes the log (what a reading quotes).
    log = (keep / "wall_time.log").read_text()
    sittings = [int(seconds) for seconds in re.findall(r"sitting finished: (\d+) s wall", log)]
    assert len(sittings) == 3 and f"all sittings: {sum(sittings)} s wall" in log.splitlines()
    assert re.search(r"reports: \d+ s wall\n$", log)


def test_the_gpu_study_command_says_how_to_call_it():
    result = subprocess.run(["bash", str(REPO / "sweeps" / "study_gpu.sh"), "48", "/data"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "sweeps/study_gpu.sh 32 DATA_ROOT" in result.stdout and "sweeps/study_gpu.sh 64 DATA_ROOT" in result.stdout
