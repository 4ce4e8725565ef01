"""``python -m lightning_diff.sample``: the run's grid, other samplers, other grids, weights."""

import numpy as np
import pytest

from conftest import run_module, train_config
from lightning_diff.training import train


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("linear")
    return train(train_config(run_dir, "data.dim=4", "data.num_train=2000", "diffusion.num_levels=7"))


def test_sample_writes_samples_levels_and_seeds(linear_run, tmp_path):
    out = tmp_path / "s.npz"
    result = run_module(
        "lightning_diff.sample", f"ckpt={linear_run['checkpoint']}", "num_samples=12", "seed=3", f"out={out}", "sampler=heun"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = np.load(out)
    assert saved["samples"].shape == (12, 4)
    levels = saved["levels"]
    assert levels.shape == (7,) and np.all(np.diff(levels) < 0)
    assert levels[0] == pytest.approx(0.999) and levels[-1] == pytest.approx(0.001)
    assert saved["seeds"].shape == (12,)


@pytest.mark.slow
def test_same_seed_same_samples_and_other_grid_for_a_continuous_denoiser(linear_run, tmp_path):
    paths = [tmp_path / f"{name}.npz" for name in ("a", "b", "c")]
    for path, extra in zip(paths, ([], [], ["num_levels=20"])):
        result = run_module(
            "lightning_diff.sample", f"ckpt={linear_run['checkpoint']}", "num_samples=5", f"out={path}", *extra
        )
        assert result.returncode == 0, result.stderr[-2000:]
    a, b, c = (np.load(path) for path in paths)
    assert np.array_equal(a["samples"], b["samples"])
    assert c["levels"].shape == (20,)


def test_per_level_denoiser_refuses_another_grid(tmp_path):
    summary = train(
        train_config(tmp_path / "run", "data.dim=3", "denoiser.fit=sgd", "trainer.max_steps=5", "diffusion.num_levels=4")
    )
    result = run_module("lightning_diff.sample", f"ckpt={summary['checkpoint']}", "num_levels=6", f"out={tmp_path / 'x.npz'}")
    assert result.returncode == 2
    assert "denoiser is defined only on its own grid of 4 levels" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.npz").exists()
