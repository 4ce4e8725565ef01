"""Every bad input ends with one clear message naming the key or file and what is valid."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_module, train_config
from lightning_diff.errors import NonFiniteLossError, UserError
from lightning_diff.metrics.fid import KNOWN_WEIGHTS
from lightning_diff.run.cache import file_digest
from lightning_diff.run.checkpoint import load_checkpoint
from lightning_diff.run.cli import check_command_line, compose_or_explain, exit_on_user_error
from lightning_diff.trained import TrainedRun
from lightning_diff.training import train


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sampler=foo", "error: sampler=foo: no such option in conf/sampler/; choose one of ddim, ddpm, heun"),
        ("denoiser=not_a_family", "error: denoiser=not_a_family: no such option in conf/denoiser/; choose one of "
         "bottleneck, bottleneck_image, diffusers_unet, dit, empirical"),
        ("experiment=paper/unet/nope", "error: experiment=paper/unet/nope: no such option in conf/experiment/; "
         "choose one of main, paper/theory_bottleneck"),
        ("nonexistent_key=3", "error: nonexistent_key=3: no such key; the keys are calibrated_on, callbacks, "
         "closed_form_val_images, data, denoiser"),
        ("trainer.max_stepz=3", "error: trainer.max_stepz=3: no such key; did you mean trainer.max_steps?"),
        ("a=[1", "error: a=[1: not a valid override"),
        ("optimizer.lr=-1", "error: optimizer.lr=-1 is not valid: the learning rate must be > 0"),
        ("optimizer.betas=[0.9,1.5]", "error: optimizer.betas=[0.9, 1.5] is not valid: two numbers in [0, 1)"),
        ("trainer.max_steps=abc", "error: trainer.max_steps='abc' is not valid: training steps"),
        ("num_samples=-5", "error: num_samples=-5 is not valid: samples written at the end (0: none), an integer >= 0"),
        ("trainer.val_check_interval=0", "error: trainer.val_check_interval=0 is not valid"),
        ("closed_form_val_images=abc", "error: closed_form_val_images='abc' is not valid: validation images"),
        # Text where a number is expected, for any key a builder takes (checked against its annotation).
        ("diffusion.num_levels=abc", "error: diffusion.num_levels='abc' is not valid: it must be an integer"),
        ("data.num_train=abc", "error: data.num_train='abc' is not valid: it must be an integer"),
        ("diffusion.t_min=abc", "error: diffusion.t_min='abc' is not valid: it must be a number"),
        ("denoiser.rank=[1]", "error: denoiser.rank=[1] is not valid: it must be an integer or null"),
        ("sampler.batch_size=abc", "error: sampler.batch_size='abc' is not valid: it must be an integer"),
        ("callbacks.ema.decay=abc", "error: callbacks.ema.decay='abc' is not valid: it must be a number"),
        ("metrics.kid.subsets=abc", "error: metrics.kid.subsets='abc' is not valid: it must be an integer"),
    ],
)
def test_command_line_mistakes_exit_2_with_one_line_naming_the_key(tmp_path, override, expected, capsys):
    # What `python -m lightning_diff.train` does, in process: the command line first, then the run.
    overrides = ["trainer=cpu", "logger=none", f"paths.run_dir={tmp_path}", override]
    with pytest.raises(SystemExit) as stopped:
        check_command_line("train", overrides)
        exit_on_user_error(lambda: train(compose_or_explain("train", overrides)))
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "checkpoints").exists()


def test_a_mistake_on_the_real_command_line_exits_2_with_one_line(tmp_path):
    result = run_module("lightning_diff.train", "trainer=cpu", "logger=none", f"hydra.run.dir={tmp_path}", "sampler=foo")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: sampler=foo: no such option in conf/sampler/; choose one of ddim, ddpm, heun"
    ]


def test_a_fid_weights_file_with_the_wrong_checksum_stops_the_run_before_training(tmp_path):
    weights = tmp_path / "inception.pt"
    weights.write_bytes(b"not the published network")
    result = run_module(
        "lightning_diff.train", "trainer=cpu", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", "data=digits",
        "denoiser=empirical", f"metrics.features.weights={weights}",
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    found = file_digest(weights)
    published = KNOWN_WEIGHTS["torchscript"].checksum.split(":")[1]
    assert line.startswith(f"error: metrics.features.weights={weights} has sha256 {found}, expected {published}")
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "run.json").exists()


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


def test_an_unknown_key_is_judged_against_the_chosen_group_option(capsys):
    with pytest.raises(SystemExit) as stopped:
        check_command_line("train", ["denoiser=unet", "denoiser.num_block=3"])
    assert stopped.value.code == 2
    assert "error: denoiser.num_block=3: no such key; did you mean denoiser.num_blocks?" in capsys.readouterr().err


def broken_sample_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Sample files each wrong in one way, with the words of the one line that names it."""
    folder.mkdir(parents=True, exist_ok=True)
    good = np.zeros((4, 1, 8, 8), dtype=np.float32)
    made = {"corrupt": (folder / "corrupt.npz", "is not a readable .npz file")}
    made["corrupt"][0].write_bytes(b"PK\x03\x04 not really a zip")
    cases = {
        "nan": ({"samples": np.full_like(good, np.nan), "seeds": np.arange(4)}, "holds NaN or infinite values"),
        "seeds": ({"samples": good, "seeds": np.arange(3)}, "holds 4 samples but seeds of shape (3,)"),
        "levels": ({"samples": good, "seeds": np.arange(4), "levels": np.array([2.0, 0.5])}, "'levels' must be the grid"),
    }
    for name, (arrays, words) in cases.items():
        np.savez(folder / f"{name}.npz", **arrays)
        made[name] = (folder / f"{name}.npz", words)
    return made


@pytest.mark.parametrize("case", ["corrupt", "nan", "seeds", "levels"])
def test_a_broken_sample_file_is_one_line_naming_it_in_compare_evaluate_and_report(tmp_path, case):
    path, words = broken_sample_files(tmp_path / "files")[case]
    good = tmp_path / "good.npz"
    np.savez(good, samples=np.zeros((4, 1, 8, 8), dtype=np.float32), seeds=np.arange(4))
    sweep = tmp_path / "sweep" / "run"
    sweep.mkdir(parents=True)
    (sweep / "run.json").write_text(json.dumps({"config": {"variant": "x"}, "samples": "samples.npz"}))
    (sweep / "samples.npz").write_bytes(path.read_bytes())
    runs = {
        "compare": ["lightning_diff.compare", f"a={good}", f"b={path}", f"out={tmp_path / 'out.json'}"],
        "evaluate": ["lightning_diff.evaluate", f"samples={path}", "data=digits", f"out={tmp_path / 'out.json'}"],
        "report": ["lightning_diff.report", f"sweep={tmp_path / 'sweep'}", "reference=x", "figure=false"],
    }
    for name, args in runs.items():
        if name == "evaluate" and case in ("seeds", "levels"):
            continue  # evaluate reads only the samples of a file
        result = run_module(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and words in lines[0], (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and not (tmp_path / "out.json").exists()
        assert not (tmp_path / "sweep" / "report.md").exists()


def test_a_checkpoint_with_nan_weights_is_refused_by_name(tmp_path):
    summary = train(train_config(tmp_path / "run", "data.dim=3", "denoiser.fit=sgd", "trainer.max_steps=2"))
    checkpoint = torch.load(summary["checkpoint"], weights_only=True)
    key = next(key for key in checkpoint["state_dict"] if key.startswith("denoiser."))
    checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], float("nan"))
    torch.save(checkpoint, summary["checkpoint"])
    with pytest.raises(UserError, match=f"weights {key.removeprefix('denoiser.')}.* hold NaN or infinite values"):
        TrainedRun.load(tmp_path / "run")
