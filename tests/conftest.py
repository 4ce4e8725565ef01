"""Shared fixtures: offline W&B, composing the Hydra config, running the entry points."""

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lightning_diff.cli import CONF_DIR

os.environ.setdefault("WANDB_MODE", "offline")
# Tests never see a user's cache (where prefetch may have put FID weights): FID stays off
# unless a test configures weights itself.
os.environ["LIGHTNING_DIFF_CACHE"] = tempfile.mkdtemp(prefix="lightning_diff_cache_")
os.environ.setdefault("WANDB_SILENT", "true")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: for tiny tensors, two threads on 2 shared cores wait on each other
    far longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def require_system(what: str, present: bool) -> None:
    """Skip when a system part is missing, or fail when LIGHTNING_DIFF_REQUIRE_SYSTEM=1 (CI)."""
    if present:
        return
    if os.environ.get("LIGHTNING_DIFF_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"required system part missing: {what} (see .ci/run)")
    pytest.skip(f"system part missing: {what}")


def train_config(run_dir: Path, *overrides: str, config_name: str = "train") -> DictConfig:
    """The composed training config with ``overrides``, writing into ``run_dir``, CPU, no logger."""
    base = ["trainer=cpu", "logger=none", f"paths.run_dir={run_dir}", "trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=base + list(overrides))


def run_module(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <args>`` in a subprocess, capturing output."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
