"""Every bad input ends with one clear message naming the key or file and what is valid."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_module, train_config
from lightning_diff.checkpoint import load_checkpoint
from lightning_diff.errors import NonFiniteLossError, UserError
from lightning_diff.train import train


def test_unknown_group_option_lists_the_valid_ones():
    result = run_module("lightning_diff.train", "denoiser=nonexistent", "logger=none")
    assert result.returncode != 0
    assert "Could not find 'denoiser/nonexistent'" in result.stderr
    assert "linear" in result.stderr and "empirical" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = run_module(
        "lightning_diff.train", "trainer=cpu", "logger=none", f"hydra.run.dir={tmp_path}", "denoiser.rank=99"
    )
    assert result.returncode == 2
    assert "error: denoiser.rank=99 is invalid for data of dimension 8" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_setting_of_a_family_is_named(tmp_path):
    with pytest.raises(UserError, match=r"denoiser\.rank: not a setting of .*bottleneck.*valid settings: .*width"):
        train(train_config(tmp_path, "denoiser=bottleneck", "+denoiser.rank=3"))


def test_rank_larger_than_dimension(tmp_path):
    with pytest.raises(UserError, match=r"denoiser\.rank=9 is invalid for data of dimension 8; use 1\.\.8"):
        train(train_config(tmp_path, "denoiser.rank=9"))


def test_grid_level_outside_unit_interval(tmp_path):
    with pytest.raises(UserError, match=r"level\(s\) \[1\.2\] outside \(0, 1\)"):
        train(train_config(tmp_path, "diffusion.grid_values=[0.1,0.5,1.2]"))


def test_npz_without_x(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, y=np.zeros((10, 3)))
    with pytest.raises(UserError, match=r"has no array 'x' \(it has: y\)"):
        train(train_config(tmp_path / "run", "data=npz", f"data.path={path}"))


def test_npz_with_nans(tmp_path):
    data = np.random.default_rng(0).normal(size=(20, 3))
    data[4, 1] = np.nan
    path = tmp_path / "data.npz"
    np.savez(path, x=data)
    with pytest.raises(UserError, match=r"NaN or infinite values in 1 rows"):
        train(train_config(tmp_path / "run", "data=npz", f"data.path={path}"))


def test_missing_npz_file(tmp_path):
    with pytest.raises(UserError, match=r"no such file"):
        train(train_config(tmp_path / "run", "data=npz", f"data.path={tmp_path / 'missing.npz'}"))


def test_npz_trains_as_given(tmp_path):
    data = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    path = tmp_path / "data.npz"
    np.savez(path, x=data)
    summary = train(train_config(tmp_path / "run", "data=npz", f"data.path={path}", "num_samples=8"))
    assert np.load(summary["samples"])["samples"].shape == (8, 3)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.ckpt"
    # Random bytes fail inside the unpickler with all kinds of error types (KeyError, IndexError,
    # ...); each must become the one message (or the refusal, when the bytes name a global).
    for seed in range(300):
        path.write_bytes(np.random.default_rng(seed).bytes(1000))
        with pytest.raises(UserError, match=r"junk\.ckpt is not a readable PyTorch checkpoint|refused to load \S*junk\.ckpt"):
            load_checkpoint(path)
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    result = run_module("lightning_diff.sample", f"ckpt={path}")
    assert result.returncode == 2 and "not a readable PyTorch checkpoint" in result.stderr


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_crafted_to_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(UserError, match=r"refused to load .*could run code"):
        load_checkpoint(path)
    assert not marker.exists()
    # The same file is refused when a run would resume from it.
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(path.read_bytes())
    with pytest.raises(UserError, match="refused to load"):
        train(train_config(run_dir))
    assert not marker.exists()
    # A plain pickle file (not a zip checkpoint) is refused too.
    plain = tmp_path / "plain.ckpt"
    with open(plain, "wb") as handle:
        pickle.dump(_RunsCode(marker), handle)
    with pytest.raises(UserError):
        load_checkpoint(plain)
    assert not marker.exists()


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    overrides = [
        "denoiser.fit=sgd", "optimizer=sgd", "optimizer.lr=1000", "optimizer.momentum=0.0",
        "callbacks.checkpoint_every_n_steps=1", "trainer.max_steps=200", "num_samples=0",
    ]
    with pytest.raises(NonFiniteLossError, match=r"became .* at step \d+.*last good weights"):
        train(train_config(tmp_path, *overrides))
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    for key in ("state_dict", "current_model_state"):
        for name, value in checkpoint.get(key, {}).items():
            assert torch.isfinite(value.float()).all(), (key, name)
    assert checkpoint["global_step"] >= 1
