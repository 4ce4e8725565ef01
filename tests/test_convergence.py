"""Issue #15, part: every trained run records its validation curve, and the report says whether
it converged (no level's validation loss still fell by 2% or more over the last quarter) and
whether it is overfitting (a level's rose by 2% or more)."""

import json
import os
import signal

import pytest

from conftest import LINEAR_SGD, train_config
from lightning_diff.errors import UserError
from lightning_diff.module import DiffusionModule
from lightning_diff.report import rows
from lightning_diff.run.study import Run, convergence, last_quarter_changes, longer_overrides, unconverged
from lightning_diff.training import train


def history(*losses: list[float], every: int = 250) -> list[dict]:
    return [{"step": every * (i + 1), "val_loss_per_level": list(level)} for i, level in enumerate(losses)]


def test_the_last_quarter_changes_are_each_levels_signed_change_since_three_quarters_of_training():
    curve = history([0.5, 0.10], [0.4, 0.09], [0.3, 0.080], [0.29, 0.0785])  # steps 250 .. 1000
    assert last_quarter_changes(curve) == pytest.approx([(0.29 - 0.3) / 0.29, (0.0785 - 0.080) / 0.0785])
    assert last_quarter_changes(curve[:1]) is None
    assert last_quarter_changes(history([0.5], [0.4], every=1000)[1:]) is None  # no validation before 3/4


def test_converged_means_no_level_still_falls_and_a_level_that_rises_is_reported_as_overfitting():
    def run(name: str, fit: str, curve: list[dict]) -> Run:
        return Run(name=name, split="full", config={"denoiser": {"fit": fit}}, location=name, val_history=curve)

    settled = run("settled", "sgd", history([0.2, 0.1], [0.2, 0.1], [0.2, 0.1], [0.201, 0.1]))
    moving = run("moving", "sgd", history([0.4, 0.2], [0.3, 0.15], [0.2, 0.1], [0.15, 0.08]))
    unknown = run("one_check", "sgd", history([0.2, 0.1]))
    fitted = run("fitted", "closed_form", [])
    # level 0 settled, level 1 past its held-out optimum: more steps would not help it
    overfitting = run("overfitting", "sgd", history([0.4, 0.2], [0.3, 0.15], [0.2, 0.1], [0.199, 0.104]))
    columns, table = rows([settled, moving, unknown, fitted, overfitting])
    assert {"converged", "overfitting", "val_fall_last_quarter", "val_rise_last_quarter"} <= set(columns)
    assert [row["converged"] for row in table] == ["yes", "no", convergence(unknown, 0.02).converged, None, "yes"]
    assert [row["overfitting"] for row in table] == ["no", "no", convergence(unknown, 0.02).overfitting, None, "yes"]
    assert table[1]["val_fall_last_quarter"] == pytest.approx(0.05 / 0.15)
    assert table[1]["val_rise_last_quarter"] == 0.0
    assert table[4]["val_fall_last_quarter"] == pytest.approx(0.001 / 0.199)
    assert table[4]["val_rise_last_quarter"] == pytest.approx(0.004 / 0.104)
    assert table[2]["converged"].startswith("unknown")


def test_run_json_holds_the_validation_curve_across_a_resume(tmp_path):
    first = [*LINEAR_SGD, "trainer.max_steps=50"]
    train(train_config(tmp_path, *first))
    resumed = train(train_config(tmp_path, *LINEAR_SGD, "trainer.max_steps=100"))
    steps = [entry["step"] for entry in resumed["val_history"]]
    assert steps == [25, 50, 75, 100]  # one point per validation; the final validation replaces, not adds
    assert json.loads((tmp_path / "run.json").read_text())["val_history"] == resumed["val_history"]
    assert all(len(entry["val_loss_per_level"]) == 10 for entry in resumed["val_history"])


def test_a_run_still_improving_is_listed_and_its_longer_rerun_scales_every_step_setting(tmp_path):
    steps = {"max_steps": 800, "val_check_interval": 200}
    for name, last in (("settled", 0.1), ("moving", 0.08), ("overfitting", 0.104)):
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        config = {"variant": name, "denoiser": {"fit": "sgd"}, "trainer": steps,
                  "callbacks": {"checkpoint_every_n_steps": 200}}
        curve = history([0.2, 0.12], [0.2, 0.11], [0.2, 0.1], [0.2, last], every=200)
        (run_dir / "run.json").write_text(json.dumps({"config": config, "val_history": curve}))
        (run_dir / ".hydra" / "overrides.yaml").write_text(
            json.dumps([f"experiment=paper/unet/{name}", "trainer.max_steps=800", "data.split=half_a"]))
    assert unconverged(tmp_path) == [tmp_path / "moving"]  # more steps would not help the overfitting one
    assert unconverged(tmp_path, tolerance=0.5) == []
    assert longer_overrides(tmp_path / "moving", 2) == [
        "experiment=paper/unet/moving", "data.split=half_a",
        "trainer.max_steps=1600", "trainer.val_check_interval=400", "callbacks.checkpoint_every_n_steps=400",
    ]
    with pytest.raises(UserError, match="factor=1 must be at least 2"):
        longer_overrides(tmp_path / "moving", 1)
    (tmp_path / "moving" / ".hydra" / "overrides.yaml").unlink()
    with pytest.raises(UserError, match="has no .hydra/overrides.yaml: the command that trained it is unknown"):
        longer_overrides(tmp_path / "moving", 2)


def test_a_run_killed_after_a_checkpoint_resumes_with_the_validation_of_that_step(tmp_path, monkeypatch):
    # Checkpoint and validation both every 25 steps; the run dies at step 60, after step 50's
    # checkpoint: the resumed run's curve must still hold step 50's validation.
    common = [*LINEAR_SGD, "callbacks.checkpoint_every_n_steps=25", "trainer.max_steps=100"]
    original = DiffusionModule.training_step

    def dies_at_60(self, *args, **kwargs):
        if self.global_step == 60:
            raise RuntimeError("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DiffusionModule, "training_step", dies_at_60)
    with pytest.raises(RuntimeError, match="killed"):
        train(train_config(tmp_path, *common))
    monkeypatch.setattr(DiffusionModule, "training_step", original)
    resumed = train(train_config(tmp_path, *common))
    assert [entry["step"] for entry in resumed["val_history"]] == [25, 50, 75, 100]


def test_a_run_stopped_by_sigterm_fails_with_the_resume_hint_and_resumes(tmp_path, monkeypatch):
    # Lightning stops fit quietly on SIGTERM; the run must not look finished (no run.json, an
    # error), and the same command resumes it to the end.
    common = [*LINEAR_SGD, "callbacks.checkpoint_every_n_steps=25", "trainer.max_steps=100"]
    original = DiffusionModule.training_step

    def terminated_at_60(self, *args, **kwargs):
        if self.global_step == 60:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DiffusionModule, "training_step", terminated_at_60)
    with pytest.raises(UserError, match=r"received SIGTERM and stopped at step \d+ of 100; run the same command"):
        train(train_config(tmp_path, *common))
    assert not (tmp_path / "run.json").exists()
    monkeypatch.setattr(DiffusionModule, "training_step", original)
    assert train(train_config(tmp_path, *common))["global_step"] == 100
