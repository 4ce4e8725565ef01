"""Issue #14, part: same-noise r^2 between two generators (``python -m lightning_diff.compare``)
and the nearest-image copying baseline."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from sklearn.metrics import r2_score
from test_measure_callback import history_rows

from conftest import run_module, train_config
from lightning_diff.compare import compare
from lightning_diff.denoisers.nearest import build as build_nearest
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.errors import UserError
from lightning_diff.figures.grids import display_side
from lightning_diff.run.cli import CONF_DIR
from lightning_diff.training import train


def compare_config(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="compare", overrides=list(overrides))


def planted(path: Path, samples: np.ndarray, seeds: list[int]) -> Path:
    np.savez(path, samples=samples, seeds=np.asarray(seeds, dtype=np.uint64))
    return path


def test_r2_and_pearson_equal_a_numpy_computation_on_planted_arrays(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 1, 4, 4))
    b = 0.7 * a + 0.3 * rng.normal(size=a.shape)
    b[3] = a[3]  # a perfect prediction
    a[5] = 0.25  # a constant reference: r^2 1 if matched exactly, else 0 (scikit-learn); Pearson undefined
    seeds = list(range(100, 109))
    out = tmp_path / "r2.json"
    result = compare(compare_config(f"a={planted(tmp_path / 'a.npz', a, seeds)}",
                                    f"b={planted(tmp_path / 'b.npz', b, seeds)}", f"out={out}"))
    expected_r2 = [r2_score(a[i].ravel(), b[i].ravel()) for i in range(9)]
    expected_r = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] if i != 5 else np.nan for i in range(9)]
    np.testing.assert_allclose(result["r2_per_sample"], expected_r2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result["pearson_r_per_sample"], expected_r, rtol=1e-12, atol=1e-12)
    assert result["r2_samples_median"] == pytest.approx(np.median(expected_r2), abs=1e-12)
    assert result["r2_samples_mean"] == pytest.approx(np.mean(expected_r2), abs=1e-12)
    assert result["pearson_r_samples_median"] == pytest.approx(np.nanmedian(expected_r), abs=1e-12)
    assert json.loads(out.read_text())["r2_per_sample"] == result["r2_per_sample"]
    assert json.loads(capsys.readouterr().out)["num_samples"] == 9
    assert "r2_single_step_per_level" not in result  # npz files have no denoiser to ask


def test_every_summary_has_its_bootstrap_interval_over_samples(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(40, 1, 4, 4))
    b = 0.7 * a + 0.5 * rng.normal(size=a.shape)
    seeds = list(range(40))
    paths = [f"a={planted(tmp_path / 'a.npz', a, seeds)}", f"b={planted(tmp_path / 'b.npz', b, seeds)}"]
    result = compare(compare_config(*paths))
    rows = a.reshape(40, -1) - np.concatenate([a, b]).reshape(80, -1).mean(0)  # the pooled mean removed
    others = b.reshape(40, -1) - np.concatenate([a, b]).reshape(80, -1).mean(0)
    cosines = (rows * others).sum(1) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(others, axis=1))
    np.testing.assert_allclose(result["agreement_cosine_per_sample"], cosines, rtol=1e-12, atol=1e-12)
    assert result["agreement_cosine_median"] == pytest.approx(np.median(cosines), abs=1e-12)
    assert result["interval_settings"] == {"level": 0.95, "resamples": 2000, "bootstrap_seed": 0}
    for key, per_sample, reduce in (("r2_samples_median", "r2_per_sample", np.median),
                                    ("r2_samples_mean", "r2_per_sample", np.mean),
                                    ("pearson_r_samples_median", "pearson_r_per_sample", np.median),
                                    ("agreement_cosine_mean", "agreement_cosine_per_sample", np.mean),
                                    ("agreement_cosine_median", "agreement_cosine_per_sample", np.median)):
        ci = result[f"{key}_ci"]
        assert ci["value"] == pytest.approx(result[key], abs=1e-12)
        # Inside the range of the statistic over resamples, and not degenerate for 40 spread values.
        assert min(result[per_sample]) <= ci["low"] < ci["value"] < ci["high"] <= max(result[per_sample])
        # About 2 x 1.96 standard errors wide (the bootstrap's own, so a loose band).
        spread = np.std(result[per_sample]) / np.sqrt(40) * (1.25 if reduce is np.median else 1.0)
        assert 2.5 * spread < ci["high"] - ci["low"] < 6.5 * spread, key
    same = compare(compare_config(*paths))
    assert same["r2_samples_median_ci"] == result["r2_samples_median_ci"]  # seeded: an interval reproduces
    other = compare(compare_config(*paths, "bootstrap_seed=1", "level=0.5", "resamples=500"))
    assert other["interval_settings"] == {"level": 0.5, "resamples": 500, "bootstrap_seed": 1}
    wider, narrower = result["r2_samples_median_ci"], other["r2_samples_median_ci"]
    assert wider["low"] < narrower["low"] < narrower["high"] < wider["high"]


def test_one_sample_or_a_bad_interval_setting_is_a_user_error(tmp_path):
    paths = [f"{side}={planted(tmp_path / f'{side}.npz', np.ones((1, 3)), [7])}" for side in "ab"]
    with pytest.raises(UserError, match="at least 2 samples, got 1; draw more samples"):
        compare(compare_config(*paths))
    two = [f"{side}={planted(tmp_path / f'{side}2.npz', np.eye(2), [7, 8])}" for side in "ab"]
    with pytest.raises(UserError, match=r"level=1.5 must be in \(0, 1\)"):
        compare(compare_config(*two, "level=1.5"))


def test_different_seeds_or_shapes_are_one_line_exit_2_and_nothing_written(tmp_path):
    a = np.zeros((4, 3))
    planted(tmp_path / "a.npz", a, [1, 2, 3, 4])
    planted(tmp_path / "b.npz", a, [1, 2, 9, 4])
    planted(tmp_path / "c.npz", np.zeros((4, 5)), [1, 2, 3, 4])
    out = tmp_path / "out.json"
    with pytest.raises(UserError, match=r"the seeds differ first at sample 2: a has 3, b has 9"):
        compare(compare_config(f"a={tmp_path / 'a.npz'}", f"b={tmp_path / 'b.npz'}", f"out={out}"))
    with pytest.raises(UserError, match=r"different data shapes, \(3,\) and \(5,\)"):
        compare(compare_config(f"a={tmp_path / 'a.npz'}", f"b={tmp_path / 'c.npz'}", f"out={out}"))
    result = run_module("lightning_diff.compare", f"a={tmp_path / 'a.npz'}", f"b={tmp_path / 'b.npz'}", f"out={out}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


RUN = ["data=toy2d", "data.num_train=128", "denoiser=bottleneck", "diffusion.num_levels=4",
       "trainer.max_steps=30", "trainer.val_check_interval=30", "num_samples=12"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("one", 0), ("two", 1)):
        # The same sampling seed (num_samples from seed 0) so the two are compared from the same noise.
        cfg = train_config(root / name, *RUN, f"denoiser.width={16 if seed else 32}")
        train(cfg)
    return root


def test_run_directories_also_give_single_step_and_trajectory_r2_per_level(two_runs):
    itself = compare(compare_config(f"a={two_runs / 'one'}", f"b={two_runs / 'one'}"))
    assert itself["levels_called"] == sorted(itself["levels_called"], reverse=True) and len(itself["levels_called"]) == 4
    assert itself["r2_single_step_per_level"] == pytest.approx([1.0] * 4)
    assert itself["r2_trajectory_per_level"] == pytest.approx([1.0] * 4)
    assert itself["r2_samples_median"] == pytest.approx(1.0)
    assert [ci["low"] for ci in itself["r2_trajectory_per_level_ci"]] == pytest.approx([1.0] * 4)
    other = compare(compare_config(f"a={two_runs / 'one'}", f"b={two_runs / 'two'}"))
    assert len(other["r2_single_step_per_level"]) == len(other["r2_trajectory_per_level"]) == 4
    assert min(other["r2_trajectory_per_level"]) < 1.0 and other["sampler"] == "DDIM(eta=0.0)"
    for name in ("single_step", "trajectory"):
        intervals = other[f"r2_{name}_per_level_ci"]
        assert [ci["value"] for ci in intervals] == other[f"r2_{name}_per_level"]
        assert all(ci["low"] <= ci["value"] <= ci["high"] for ci in intervals)
        assert any(ci["low"] < ci["high"] for ci in intervals)


def test_wandb_gets_the_numbers_the_per_level_plot_and_the_difference_grid(two_runs, tmp_path):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, size=(10, 1, 4, 4))
    seeds = list(range(10))
    out = tmp_path / "images" / "r2.json"
    out.parent.mkdir()
    result = compare(compare_config(f"a={planted(tmp_path / 'a.npz', images, seeds)}",
                                    f"b={planted(tmp_path / 'b.npz', -images, seeds)}", f"out={out}", "wandb=true"))
    grid = Image.open(out.parent / "r2.grid.png")
    side = display_side(4)
    assert grid.size == (3 * (side + 2) + 2, 8 * (side + 2) + 2)  # 8 rows of a | b | |a - b|
    (summary,) = [row for row in history_rows(out.parent) if "r2_samples_median" in row]
    assert summary["r2_samples_median"] == pytest.approx(result["r2_samples_median"])
    for key in ("r2_samples_median", "r2_samples_mean", "pearson_r_samples_median", "agreement_cosine_mean",
                "agreement_cosine_median"):
        assert summary[f"{key}_low"] == pytest.approx(result[f"{key}_ci"]["low"])
        assert summary[f"{key}_high"] == pytest.approx(result[f"{key}_ci"]["high"])
    assert summary["compare/grid/width"] == grid.size[0] and summary["compare/grid/height"] == grid.size[1]
    levels = tmp_path / "levels" / "r2.json"
    levels.parent.mkdir()
    compare(compare_config(f"a={two_runs / 'one'}", f"b={two_runs / 'two'}", f"out={levels}", "wandb=true"))
    assert (levels.parent / "r2.levels.png").stat().st_size > 0
    assert not (levels.parent / "r2.grid.png").exists()  # 2-D points: no image grid
    assert any("compare/per_level/width" in row for row in history_rows(levels.parent))


def test_runs_on_different_grids_are_refused(two_runs, tmp_path):
    train(train_config(tmp_path / "three", *RUN, "diffusion.num_levels=3"))
    with pytest.raises(UserError, match="different grids"):
        compare(compare_config(f"a={two_runs / 'one'}", f"b={tmp_path / 'three'}"))


def test_the_nearest_image_denoiser_returns_the_training_image_nearest_after_scaling():
    gen = torch.Generator().manual_seed(0)
    train_x = torch.randn(40, 6, generator=gen)
    train_x[7] = train_x[3]  # a duplicate: the lower index wins the tie
    denoiser = build_nearest((6,), make_grid(3), chunk_size=7)
    denoiser.fit_data(train_x)
    y = torch.randn(25, 6, generator=gen)
    y[0] = train_x[3] * 0.8
    for t in (0.05, 0.5, 0.95):
        levels = torch.full((25,), t)
        out = denoiser(y, levels)
        distances = torch.cdist(y.double(), (train_x * (1 - t) ** 0.5).double())
        expected = train_x[distances.argmin(dim=1)]
        torch.testing.assert_close(out, expected)
    assert int(denoiser.nearest_index(y[:1], torch.tensor([0.36]))) == 3
    assert denoiser.accepts_any_t and denoiser.fit == "closed_form"
