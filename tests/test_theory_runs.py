"""Issue #4: each `experiment=paper/theory_<family>` trains or fits, samples, compares with the
prediction and records predicted and measured numbers in run.json (small sizes here; the
full-size commands are in docs/theory.md)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_system, train_config
from lightning_diff.compose import build
from lightning_diff.diffusion.samplers import make_sampler
from lightning_diff.errors import UserError
from lightning_diff.metrics.nearest import copy_fraction
from lightning_diff.seeding import sample_seeds
from lightning_diff.theory.linear import GaussianPrediction
from lightning_diff.trained import TrainedRun
from lightning_diff.training import train
from wandb_offline import finished_records, offline_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def run(run_dir: Path, experiment: str, *overrides: str) -> dict:
    """Train with the experiment config and return the theory section of the written run.json."""
    train(train_config(run_dir, f"experiment=paper/{experiment}", *overrides))
    recorded = json.loads((run_dir / "run.json").read_text())
    assert recorded["config"]["theory"]["_target_"].startswith("lightning_diff.theory.check.")
    return recorded["theory"]


@pytest.mark.parametrize("experiment", ["theory_linear", "theory_linear_ddpm"])
def test_theory_linear_commands_record_predicted_and_measured_variances(tmp_path, experiment):
    theory = run(tmp_path, experiment, "num_samples=8000", "data.num_train=4000")
    assert theory["sampler"] == ("DDPM()" if experiment.endswith("ddpm") else "DDIM(eta=0.0)")
    predicted, measured = np.array(theory["variance_predicted"]), np.array(theory["variance_measured"])
    assert predicted.shape == measured.shape == (16,)
    assert np.abs(measured / predicted - 1).max() == pytest.approx(theory["variance_max_relative_error"])
    assert theory["variance_max_relative_error"] < 5 * theory["variance_sampling_standard_error"]
    assert theory["predicted_over_training_variance_min"] < 0.5  # 10 levels shrink the variances
    assert Path(theory["figure"]).is_file()


def test_theory_linear_rank_command_keeps_samples_in_the_top_4_subspace(tmp_path):
    theory = run(tmp_path, "theory_linear_rank", "num_samples=5000")
    assert theory["rank"] == 4
    assert theory["energy_outside_subspace_predicted"] == 0.0
    assert theory["energy_outside_subspace_measured"] < 1e-8
    assert theory["variance_max_relative_error"] < 0.06


@pytest.mark.slow
def test_sgd_trained_linear_matches_the_exact_finite_grid_prediction(tmp_path):
    # The full training recipe of theory_linear_sgd; fewer samples (standard error 1%).
    theory = run(tmp_path, "theory_linear_sgd", "num_samples=20000")
    print(f"SGD linear, ddim: max relative variance error {theory['variance_max_relative_error']:.4f}")
    assert theory["variance_within_tolerance"] and theory["variance_max_relative_error"] < 0.05
    # The same trained maps under DDPM ancestral sampling.
    trained = TrainedRun.load(tmp_path)
    ddpm = make_sampler("ddpm", batch_size=20_000)
    samples = trained.draw(sample_seeds(0, 20_000), sampler=ddpm)
    datamodule = trained.datamodule()  # the run's own data, from its stored config
    prediction = GaussianPrediction.from_data(datamodule.train_data, trained.grid, ddpm)
    relative = prediction.measured_variances(samples) / prediction.variances - 1
    print(f"SGD linear, ddpm: max relative variance error {relative.abs().max():.4f}")
    assert relative.abs().max() < 0.05


@pytest.mark.slow
def test_default_sgd_of_the_linear_family_meets_the_finite_grid_law_on_a_spectrum_of_its_own(tmp_path):
    # Issue 14, item 5: no tuning. 6-D data with eigenvalues drawn here, spread from 4 to 1e-3
    # (before whitening, default Adam left the smallest direction 57% off); defaults except length.
    rng = np.random.default_rng(20261130)
    eigvals = np.concatenate([[4.0, 1e-3], 10 ** rng.uniform(-3, np.log10(4), size=4)])
    spectrum = "[" + ",".join(f"{v:.6g}" for v in rng.permutation(eigvals)) + "]"
    overrides = [
        "denoiser.fit=sgd", "data.dim=6", f"data.eigvals={spectrum}", "trainer.max_steps=6000",
        "trainer.val_check_interval=6000", "callbacks.checkpoint_every_n_steps=6000", "num_samples=20000",
        "theory.tolerance=0.05",
    ]
    train(train_config(tmp_path, "experiment=paper/theory_linear", *overrides))
    recorded = json.loads((tmp_path / "run.json").read_text())
    print(f"spectrum {spectrum}: relative variance errors {np.round(recorded['theory']['variance_relative_error'], 4)}")
    assert recorded["config"]["optimizer"]["lr"] == 0.001 and recorded["config"]["lr_schedule"]["decay"] == "constant"
    assert recorded["theory"]["variance_within_tolerance"]
    assert recorded["theory"]["variance_max_relative_error"] < 0.05
    optimum = recorded["class_optimum"]
    assert len(optimum["excess_val_loss_per_level"]) == 10
    assert optimum["excess_val_loss_relative_max"] < 0.01


@pytest.mark.slow
def test_sgd_of_the_polynomial_family_reaches_its_closed_form_at_every_level(tmp_path):
    train(train_config(
        tmp_path, "experiment=paper/theory_polynomial", "denoiser.fit=sgd", "theory=null", "trainer.max_steps=6000",
        "trainer.val_check_interval=6000", "callbacks.checkpoint_every_n_steps=6000", "num_samples=16",
    ))
    optimum = json.loads((tmp_path / "run.json").read_text())["class_optimum"]
    closed_form, excess = np.array(optimum["closed_form_val_loss_per_level"]), np.array(optimum["excess_val_loss_per_level"])
    print(f"polynomial SGD: excess over the closed form relative to it, per level {np.round(excess / closed_form, 5)}")
    assert np.all(excess / closed_form < 0.01)


def test_a_closed_form_run_reports_no_class_optimum_and_an_sgd_only_family_neither(tmp_path):
    train(train_config(tmp_path / "cf", "data.dim=3", "trainer.max_steps=5", "num_samples=4"))
    assert "class_optimum" not in json.loads((tmp_path / "cf" / "run.json").read_text())
    train(train_config(tmp_path / "mlp", "data.dim=3", "denoiser=bottleneck", "trainer.max_steps=5", "num_samples=4"))
    assert "class_optimum" not in json.loads((tmp_path / "mlp" / "run.json").read_text())


def test_theory_polynomial_command_same_moments_same_samples(tmp_path):
    theory = run(tmp_path, "theory_polynomial", "num_samples=1000", "data.num_base=200", "logger=wandb")
    print({key: value for key, value in theory.items() if "difference" in key or "gap" in key})
    assert theory["matched_pair_moment_gap_up_to_order_4"] < 1e-6
    assert theory["matched_pair_moment_gap_order_5"] > 1e-2
    assert theory["matched_pair_denoiser_max_difference"] < 1e-6
    assert theory["matched_pair_sample_max_difference"] < 1e-5
    assert theory["control_pair_moment_gap_up_to_order_3"] < 1e-10
    assert theory["control_pair_sample_max_difference"] > 1e-2
    # The numbers and the comparison figure went to the (offline) W&B run.
    (wandb_run,) = offline_runs(tmp_path)
    assert list(wandb_run.glob("files/media/images/theory/figure*.png"))
    logged = logged_values(next(wandb_run.glob("run-*.wandb")))
    assert logged["theory/matched_pair_sample_max_difference"] == pytest.approx(theory["matched_pair_sample_max_difference"])


def logged_values(path: Path) -> dict:
    """Every history key and value of an offline W&B run file, once its exit record is written."""
    return {
        item.key or "/".join(item.nested_key): json.loads(item.value_json)
        for record in finished_records(path)
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
    }


def test_theory_empirical_command_copies_fashion_mnist(tmp_path):
    require_system("fashion_mnist")
    theory = run(tmp_path, "theory_empirical")  # full size: N = 200 at 28x28, 500 samples
    assert theory["num_train"] == 200 and theory["num_samples"] == 500
    assert theory["copy_fraction_predicted_lower_bound"] >= 0.99
    assert theory["copy_fraction_measured"] >= 0.99
    samples = torch.from_numpy(np.load(tmp_path / "samples.npz")["samples"])
    assert samples.shape == (500, 1, 28, 28)
    datamodule = build(json.loads((tmp_path / "run.json").read_text())["config"]["data"], "data")
    assert copy_fraction(samples, datamodule.train_data) == pytest.approx(theory["copy_fraction_measured"])


def test_theory_bottleneck_command_samples_lie_on_the_last_decoder_curve(tmp_path):
    theory = run(
        tmp_path, "theory_bottleneck", "trainer.max_steps=300", "data.num_train=2000", "num_samples=500",
        "trainer.val_check_interval=300",
    )
    print(f"max sample distance {theory['sample_distance_to_decoder_image_max']:.3g}, "
          f"median training distance {theory['train_distance_to_decoder_image_median']:.3g}")
    assert theory["code_dim"] == 1
    assert theory["sample_distance_to_decoder_image_max"] < 1e-5
    assert theory["train_distance_to_decoder_image_median"] > 0.05
    assert theory["fraction_of_samples_within_tolerance"] == 1.0


def test_theory_without_samples_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="num_samples"):
        train(train_config(tmp_path, "experiment=paper/theory_linear", "num_samples=0"))
