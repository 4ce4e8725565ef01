"""Issue #12: a run's output is readable in a log file and free of third-party tips nobody can act on."""

import os
import re
import subprocess
import sys

from conftest import REPO

NOISE = (
    "The `srun` command is available on your system but is not used",
    "litlogger",
    "`isinstance(treespec, LeafSpec)` is deprecated",
    "The anonymous setting has no effect",
    "returned `None`, this fit will run with no optimizer",
)
PROGRESS_LINE = re.compile(r"^train: step (\d+)/200 \((\d+)%\), loss [0-9.e+-]+(, val/loss [0-9.e+-]+)?, [0-9.e+]+/s, ETA \d+:\d\d:\d\d$")


def train_logged_to_files(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m lightning_diff.train`` with stdout and stderr going to files (not a terminal)."""
    # A fake srun on PATH: Lightning warns whenever one exists and the run was not started by it.
    fake_srun = tmp_path / "bin" / "srun"
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/sh\nexit 1\n")
    fake_srun.chmod(0o755)
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", PATH=f"{fake_srun.parent}:{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_diff.train", "trainer=cpu", "data=toy2d", "data.num_train=256",
         "num_samples=8", "callbacks.measure.num_samples=8", f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for message in NOISE:
        assert message not in output
    assert "\r" not in output  # no redrawn bars in a log
    return result


def test_a_closed_form_fit_prints_no_noise(tmp_path):
    result = train_logged_to_files(tmp_path, "denoiser=empirical")
    assert not [line for line in result.stderr.splitlines() if line.startswith("train: ")]  # nothing trained


def test_a_run_logged_to_a_file_prints_progress_lines_no_noise_and_ends_with_its_summary(tmp_path):
    run_dir = tmp_path / "run"
    result = train_logged_to_files(
        tmp_path, "denoiser=bottleneck", "data.batch_size=32", "trainer.max_steps=200", "trainer.val_check_interval=100"
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: ")]
    assert all(PROGRESS_LINE.match(line) for line in lines), lines
    percents = [int(PROGRESS_LINE.match(line).group(2)) for line in lines]
    assert percents == list(range(5, 101, 5))  # one line every 5% of the steps
    assert "val/loss" in lines[-1]
    summary = result.stdout.strip().splitlines()[-5:]
    assert [line.split(":")[0] for line in summary] == ["run directory", "run summary", "checkpoint", "samples", "W&B run"]
    assert summary[0] == f"run directory: {run_dir}"
