"""Issue #7: ``python -m lightning_diff.report`` turns a sweep's runs into one table and one figure."""

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from conftest import run_module, train_config
from lightning_diff.errors import UserError
from lightning_diff.figures.grids import LABEL_WIDTH, PADDING, PAIR_PADDING, display_side
from lightning_diff.metrics.agreement import TwoModelAgreement
from lightning_diff.metrics.explanation import Generated, chose_on, explain_one, explanations
from lightning_diff.metrics.intervals import bootstrap, nan_mean, paired_difference
from lightning_diff.metrics.r2 import per_sample_r2, per_sample_sse
from lightning_diff.report import labels_of, report
from lightning_diff.run.cli import CONF_DIR
from lightning_diff.run.study import Run, halves, runs_in_directory, runs_in_wandb_group
from lightning_diff.seeding import calibration_seeds, sample_seeds
from lightning_diff.training import train

TINY = [
    "data.num_train=24",
    "data.num_val=8",
    "data.batch_size=8",
    "diffusion.num_levels=3",
    "trainer.max_steps=10",
    "trainer.val_check_interval=10",
    "callbacks.measure.every_n_steps=0",
    "callbacks.measure.num_samples=4",
    "num_samples=4",
    "sampler.batch_size=4",
]
# Three variants as a sweep numbers them, and both halves of the memorizer for the agreement.
SWEEP = [
    ["experiment=paper/unet/paper", "denoiser.base_channels=4"],
    ["experiment=paper/unet/no_skip", "denoiser.base_channels=4"],
    ["experiment=paper/unet/empirical"],
    ["experiment=paper/unet/empirical", "data.split=half_a"],
    ["experiment=paper/unet/empirical", "data.split=half_b"],
]
COLUMNS = 3


def report_config(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="report", overrides=list(overrides))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, fashion_stand_in) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for job, overrides in enumerate(SWEEP):
            train(train_config(root / str(job), *overrides, *TINY, f"data.root={fashion_stand_in}"))
    finally:
        torch.set_num_threads(threads)
    return root


def close(text: str, value: float, digits: int) -> bool:
    return math.isclose(float(text), value, rel_tol=0.5 * 10 ** (1 - digits), abs_tol=1e-12)


def test_the_table_holds_each_runs_numbers_and_the_figure_pairs_samples_with_neighbours(sweep, tmp_path):
    out = tmp_path / "report"
    result = report(report_config(f"sweep={sweep}", f"out={out}", f"columns={COLUMNS}"))
    summaries = [json.loads((sweep / str(job) / "run.json").read_text()) for job in range(len(SWEEP))]

    with (out / "report.csv").open() as handle:
        table = list(csv.DictReader(handle))
    lines = (out / "report.md").read_text().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    markdown = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    assert [row["variant"] for row in table] == ["paper", "no_skip", "empirical", "empirical", "empirical"]
    assert [row["split"] for row in table] == ["full", "full", "full", "half_a", "half_b"]
    assert len(markdown) == len(SWEEP)

    for row, md, summary in zip(table, markdown, summaries):
        metrics, measure = summary["metrics"], summary["measure"]
        levels = [metrics[f"val/loss_level_{k}"] for k in range(3)]
        assert int(row["num_parameters"]) == summary["num_parameters"]
        assert float(row["val_loss"]) == metrics["val/loss"]
        assert [float(v) for v in row["val_loss_per_level"].split()] == levels
        assert float(row["memorized_fraction"]) == measure["memorized_fraction"]
        assert float(row["d1_median"]) == measure["d1_median"]
        assert float(row["wall_time_s"]) == summary["wall_time_s"]
        assert row["run"] == str(Path(summary["checkpoint"]).parent.parent)

        assert int(md["parameters"].replace(",", "")) == summary["num_parameters"]
        assert close(md["val loss"], metrics["val/loss"], 4)
        assert all(close(text, level, 3) for text, level in zip(md["val loss per level (low t first)"].split(), levels))
        assert close(md["memorized [95% exact]"].split()[0], measure["memorized_fraction"], 4)
        assert close(md["median d1"], measure["d1_median"], 4)
        assert round(float(md["wall time (s)"])) == round(summary["wall_time_s"])

    # The agreement: only the two halves of a variant have one, computed on their same-seed samples.
    halves = [np.load(sweep / str(job) / "samples.npz")["samples"] for job in (3, 4)]
    metric = TwoModelAgreement()
    metric.update(torch.from_numpy(halves[0]), torch.from_numpy(halves[1]))
    expected = float(metric.compute()["agreement_cosine_mean"])
    assert [row["agreement"] for row in table[:3]] == ["", "", ""]
    assert float(table[3]["agreement"]) == pytest.approx(expected, rel=1e-12)
    assert float(table[4]["agreement"]) == float(table[3]["agreement"])
    assert float(table[3]["agreement_low"]) < expected < float(table[3]["agreement_high"])  # its 95% interval
    cell = markdown[3]["two-model agreement [95%]"]
    assert close(cell.split()[0], expected, 4) and cell.split()[1].startswith("[")
    assert markdown[0]["two-model agreement [95%]"] == "-"

    # Same-noise agreement with the reference (paper) on the same half: the metric on the two runs'
    # samples for no_skip, marked as a same-seed comparison (no paper run of another seed here);
    # none for paper itself (no other reference run) and where no paper run used that half.
    samples = [torch.from_numpy(np.load(sweep / str(job) / "samples.npz")["samples"]) for job in (0, 1)]
    metric = TwoModelAgreement()
    metric.update(samples[1], samples[0])
    assert table[0]["vs_reference"] == ""
    assert float(table[1]["vs_reference"]) == pytest.approx(float(metric.compute()["agreement_cosine_mean"]), rel=1e-12)
    assert table[1]["reference_pairs"] == "same training seed only: no_skip (seed 0) vs paper (seed 0)"
    assert table[3]["vs_reference"] == table[4]["vs_reference"] == ""
    assert table[1]["verdict"] == "undetermined"  # no verdict from a same-seed comparison

    # Rows = runs, columns = the first seeds (the same in every run); 16x16 images drawn at 64x64.
    side = display_side(16)
    width, height = Image.open(result["figure"]).size
    assert result["figure"] == out / "report.png"
    assert height == len(SWEEP) * (side + 2 * PAIR_PADDING + PADDING) + PADDING
    assert width == LABEL_WIDTH + COLUMNS * (2 * side + 3 * PAIR_PADDING + PADDING) + PADDING


def test_the_report_goes_into_the_sweep_directory_by_default(sweep):
    result = report(report_config(f"sweep={sweep}", "figure=false"))
    assert result["markdown"] == sweep / "report.md" and result["csv"].is_file() and result["figure"] is None


def test_runs_read_from_a_wandb_group_give_the_same_row(sweep):
    summary = json.loads((sweep / "0" / "run.json").read_text())
    wandb_summary = {
        **summary["metrics"],
        **{f"measure/{key}": value for key, value in summary["measure"].items()},
        "num_parameters": summary["num_parameters"],
        "wall_time_s": summary["wall_time_s"],
        "_runtime": 99,
    }
    fake_run = SimpleNamespace(config=summary["config"], summary=wandb_summary, path=["me", "proj", "abc"], name="x")
    asked = {}

    class FakeApi:
        def runs(self, project, filters):
            asked.update(project=project, filters=filters)
            return [fake_run]

    (run,) = runs_in_wandb_group("me/proj", "study-1", api=FakeApi())
    assert asked == {"project": "me/proj", "filters": {"group": "study-1"}}
    assert (run.name, run.split, run.location) == ("paper", "full", "me/proj/abc")
    assert run.num_parameters == summary["num_parameters"] and run.val_loss == summary["metrics"]["val/loss"]
    assert run.measure == summary["measure"] and run.wall_time_s == summary["wall_time_s"]
    assert run.samples == sweep / "0" / "samples.npz"  # its run directory is on this machine


def test_runs_without_a_variant_are_named_by_the_overrides_that_set_them_apart(tmp_path):
    # A dataset-size sweep on both halves, as Hydra leaves it: .hydra/overrides.yaml in every run directory.
    for job, (size, split) in enumerate([(100, "half_a"), (100, "half_b"), (1000, "half_a"), (1000, "half_b")]):
        run_dir = tmp_path / str(job)
        (run_dir / ".hydra").mkdir(parents=True)
        config = {"seed": 0, "variant": None, "data": {"num_train": size, "split": split}}
        (run_dir / "run.json").write_text(json.dumps({"config": config, "metrics": {}}))
        overrides = ["experiment=paper/unet/paper", f"data.num_train={size}", f"data.split={split}"]
        (run_dir / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    runs = runs_in_directory(tmp_path)
    assert [(run.name, run.split) for run in runs] == [
        ("data.num_train=100", "half_a"),
        ("data.num_train=100", "half_b"),
        ("data.num_train=1000", "half_a"),
        ("data.num_train=1000", "half_b"),
    ]
    assert [(a.location, b.location) for a, b in halves(runs)] == [
        (str(tmp_path / "0"), str(tmp_path / "1")),
        (str(tmp_path / "2"), str(tmp_path / "3")),
    ]


def test_a_missing_or_empty_sweep_directory_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=rf"sweep={tmp_path} holds no run.json .*one run directory per variant"):
        report(report_config(f"sweep={tmp_path}"))
    with pytest.raises(UserError, match="exactly one of sweep="):
        report(report_config())
    result = run_module("lightning_diff.report", f"sweep={tmp_path / 'nowhere'}", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: sweep={tmp_path / 'nowhere'}: no such directory; a sweep directory holds one run directory per "
        "variant, each with the run.json that python -m lightning_diff.train writes when a run finishes (e.g. "
        "runs/multirun/<date>/<time> after `python -m lightning_diff.train -m --config-dir sweeps --config-name "
        "paper_unet`)"
    ]


def test_trained_runs_are_explained_by_a_machine_against_the_baselines(sweep, tmp_path, fashion_stand_in):
    # A local score machine from outside the sweep (machines=[DIR]); the sweep's empirical runs are the baseline.
    machine_dir = tmp_path / "machines" / "ls"
    train(train_config(
        machine_dir, "experiment=paper/unet/empirical", "variant=ls3", "denoiser=local_score", "denoiser.equivariant=false",
        "denoiser.padding=zeros", "denoiser.patch_sizes=3", *TINY, f"data.root={fashion_stand_in}",
    ))
    out = tmp_path / "report"
    result = report(report_config(f"sweep={sweep}", f"out={out}", f"columns={COLUMNS}", f"machines=[{machine_dir}]"))
    table = {(row["variant"], row["split"]): row for row in result["rows"]}
    assert ("ls3", "full") in table  # the machine joins the table (and the figure)

    def samples(path: Path) -> torch.Tensor:
        return torch.from_numpy(np.load(path / "samples.npz")["samples"]).double()

    machine, baseline = samples(machine_dir), samples(sweep / "2")  # the full-data empirical run
    for job, variant in ((0, "paper"), (1, "no_skip")):
        trained = samples(sweep / str(job))
        row = table[(variant, "full")]
        r2_machine, r2_baseline = per_sample_r2(trained, machine), per_sample_r2(trained, baseline)
        assert row["r2 vs ls3"].value == pytest.approx(float(r2_machine.quantile(0.5)), abs=1e-12)
        assert row["r2 vs ls3"] == bootstrap(r2_machine)  # the same seeded interval over samples
        assert row["r2 vs empirical"].value == pytest.approx(float(r2_baseline.quantile(0.5)), abs=1e-12)
        share = 1 - per_sample_sse(trained, machine) / per_sample_sse(trained, baseline)
        assert row["removes ls3"].value == pytest.approx(float(share.quantile(0.5)), abs=1e-12)
        assert row["removes ls3"].low <= row["removes ls3"].value <= row["removes ls3"].high
        best = "ls3" if row["r2 vs ls3"].value > row["r2 vs empirical"].value else "empirical"
        assert row["best explanation"] == best
    assert table[("empirical", "full")]["r2 vs ls3"] is None  # closed-form runs are explainers, not explained
    explained = json.loads((out / "explanations.json").read_text())
    per_level = explained["paper (full)"]["removes_per_level"]["ls3"]
    assert explained["paper (full)"]["in_sample"] == []  # ls3 was not calibrated
    assert len(per_level) == 3 and explained["paper (full)"]["best_baseline"] == "empirical"
    assert "Share of the best baseline's error" in (out / "report.md").read_text()
    with pytest.raises(UserError, match="machines: 'nope' is neither a variant"):
        report(report_config(f"sweep={sweep}", f"out={out}", "machines=[nope]"))


def test_a_machine_that_equals_the_trained_run_removes_all_of_the_baselines_error():
    gen = torch.Generator().manual_seed(0)
    trained = torch.randn(6, 1, 4, 4, generator=gen)
    seeds = np.arange(6)
    exact = Generated(trained.clone(), seeds, None)
    baseline = Generated(trained + 0.5 * torch.randn(6, 1, 4, 4, generator=gen), seeds, None)
    result = explain_one(Generated(trained, seeds, None), {"copy": ("machine", exact), "mean": ("baseline", baseline),
                                                           "same": ("machine", baseline)})
    assert result["removes"]["copy"] == pytest.approx(1.0) and result["removes"]["same"] == pytest.approx(0.0)
    assert result["best_explanation"] == "copy" and result["r2_median"]["copy"] == pytest.approx(1.0)


def test_the_seed_controls_set_a_floor_that_every_run_is_read_against(sweep, tmp_path, fashion_stand_in):
    # The paper configuration (job 0) trained with seeds 1 and 2 on seed 0's images, sampled from seed 0's noise,
    # and no_skip (job 1) with a second training seed likewise.
    grid = tmp_path / "grid"
    shutil.copytree(sweep, grid)
    for seed in (1, 2):
        train(train_config(
            grid / f"control_{seed}", *SWEEP[0], f"variant=paper_seed{seed}", f"seed={seed}", "data.seed=0",
            "sample_seed=0", *TINY, f"data.root={fashion_stand_in}",
        ))
    train(train_config(grid / "no_skip_seed1", *SWEEP[1], "seed=1", "data.seed=0", "sample_seed=0", *TINY,
                       f"data.root={fashion_stand_in}"))
    reference = np.load(grid / "0" / "samples.npz")
    for seed in (1, 2):
        control = np.load(grid / f"control_{seed}" / "samples.npz")
        assert np.array_equal(control["seeds"], reference["seeds"])  # sample_seed fixes the noise
        assert not np.array_equal(control["samples"], reference["samples"])  # the training seed changes the network

    out = tmp_path / "report"
    result = report(report_config(f"sweep={grid}", f"out={out}", "controls=[paper_seed1,paper_seed2]"))

    def samples(path: Path) -> torch.Tensor:
        return torch.from_numpy(np.load(path / "samples.npz")["samples"])

    def per_sample(run: Path, anchor: Path) -> tuple[torch.Tensor, torch.Tensor]:
        metric = TwoModelAgreement()
        metric.update(samples(run), samples(anchor))
        return per_sample_r2(samples(anchor), samples(run)), metric.per_sample()

    group = [grid / "0", grid / "control_1", grid / "control_2"]
    pairs = [per_sample(b, a) for i, a in enumerate(group) for b in group[i + 1 :]]
    floor = json.loads((out / "seed_floor.json").read_text())
    assert floor["runs"] == ["paper", "paper_seed1", "paper_seed2"] and len(floor["pairs"]) == 3
    for found, (r2, cosine) in zip(floor["pairs"], pairs):  # every seed pair with its interval
        assert found["r2"] == pytest.approx(bootstrap(r2).as_dict(), abs=1e-12)
        assert found["agreement"] == pytest.approx(bootstrap(cosine, nan_mean).as_dict(), abs=1e-12)
    pooled_r2 = torch.stack([r2 for r2, _ in pairs]).mean(dim=0)
    assert floor["pooled"]["r2"] == pytest.approx(bootstrap(pooled_r2).as_dict(), abs=1e-12)

    rows = {(row["variant"], row["split"], row["seed"]): row for row in result["rows"]}
    # Each no_skip run against the paper runs of the other training seeds only, per sample averaged over them.
    for job, seed, anchors in (("1", 0, ("control_1", "control_2")), ("no_skip_seed1", 1, ("0", "control_2"))):
        row = rows[("no_skip", "full", seed)]
        r2 = torch.stack([per_sample(grid / job, grid / anchor)[0] for anchor in anchors]).mean(dim=0)
        assert row["r2_vs_reference"] == bootstrap(r2)
        assert "same training seed" not in row["reference_pairs"] and row["reference_pairs"].count(" vs ") == 2
        assert f"no_skip (seed {seed}) vs paper" in row["reference_pairs"]
        difference = paired_difference(r2, pooled_r2)
        assert row["floor_difference"] == difference
        assert row["beyond_floor"] == ("yes" if difference.high < 0 else "no")
        assert row["verdict"] == ("differs" if difference.high < 0 else "same generator")
    assert rows[("paper_seed1", "full", 1)]["beyond_floor"] == "control"
    assert rows[("paper_seed1", "full", 1)]["verdict"] == "control"
    assert rows[("empirical", "half_a", 0)]["beyond_floor"] is None  # no reference on that half
    assert rows[("empirical", "half_a", 0)]["memorized_fraction"].low > 0  # the memorizer's samples copy
    assert rows[("empirical", "half_a", 0)]["verdict"] == "copies"
    judged = json.loads((out / "verdicts.json").read_text())
    assert sum(judged["counts"].values()) == len(judged["rows"]) == len(result["rows"]) - 1
    assert judged["counts"]["control"] == 3
    last = result["rows"][-1]
    assert last["variant"] == "seed-to-seed floor (paper x 3 seeds)"
    assert last["r2_vs_reference"] == bootstrap(pooled_r2)
    assert "seed-to-seed floor" in (out / "report.md").read_text().splitlines()[-1]
    assert (out / "report_floor.png").is_file()

    with pytest.raises(UserError, match="controls: paper_seed9 not among the report's runs"):
        report(report_config(f"sweep={grid}", f"out={out}", "controls=[paper_seed9]", "figure=false"))
    # A control sampled from its own training seed cannot be compared sample by sample.
    other = tmp_path / "other_noise"
    shutil.copytree(grid, other)
    np.savez(other / "control_1" / "samples.npz", samples=reference["samples"], seeds=reference["seeds"] + 1,
             levels=reference["levels"])
    with pytest.raises(UserError, match="the seed control paper_seed1 .* was not sampled from the seeds of paper"):
        report(report_config(f"sweep={other}", f"out={out}", "controls=[paper_seed1,paper_seed2]", "figure=false"))


def fake_run(run_dir: Path, variant: str, family: str, fit: str, size: int, split: str, samples: np.ndarray,
             memorized: float) -> None:
    """A finished run as the report reads it: run.json and samples.npz."""
    run_dir.mkdir(parents=True)
    config = {
        "seed": 0, "variant": variant, "data": {"num_train": size, "split": split, "seed": 0, "batch_size": 8},
        "denoiser": {"_target_": f"lightning_diff.denoisers.{family}.build", "fit": fit},
    }
    summary = {"config": config, "metrics": {}, "measure": {"memorized_fraction": memorized}, "samples": "samples.npz"}
    (run_dir / "run.json").write_text(json.dumps(summary))
    np.savez(run_dir / "samples.npz", samples=samples, seeds=np.arange(len(samples)), levels=np.array([0.9, 0.5, 0.1]))


def test_the_dataset_size_table_gives_memorization_agreement_and_r2_to_the_empirical_per_n(tmp_path):
    gen = np.random.default_rng(0)
    made = {}
    for size, memorized in ((100, (0.75, 0.5)), (1000, (0.0, 0.125))):
        for split, copied in zip(("half_a", "half_b"), memorized):
            empirical = gen.normal(size=(8, 1, 4, 4)).astype(np.float32)
            trained = (empirical + (0.1 if size == 100 else 1.0) * gen.normal(size=empirical.shape)).astype(np.float32)
            fake_run(tmp_path / f"n{size}" / split / "paper", "paper", "unet", "sgd", size, split, trained, copied)
            fake_run(tmp_path / f"n{size}" / split / "empirical", "empirical", "empirical", "closed_form", size, split,
                     empirical, 1.0)
            made[size, split] = (torch.from_numpy(trained), torch.from_numpy(empirical))
    out = tmp_path / "report"
    report(report_config(f"sweep={tmp_path}", f"out={out}", "reference=null", "figure=false"))
    table = json.loads((out / "dataset_size.json").read_text())
    assert [(row["variant"], row["N"], row["runs"]) for row in table] == [("paper", 100, 2), ("paper", 1000, 2)]
    for row, (size, memorized) in zip(table, ((100, (0.75, 0.5)), (1000, (0.0, 0.125)))):
        assert row["memorized"] == pytest.approx(np.mean(memorized))
        r2 = [float(per_sample_r2(made[size, s][0], made[size, s][1]).quantile(0.5)) for s in ("half_a", "half_b")]
        assert row["r2 vs empirical"] == pytest.approx(np.mean(r2), abs=1e-12)  # each half against its own empirical
        metric = TwoModelAgreement()
        metric.update(made[size, "half_a"][0], made[size, "half_b"][0])
        assert row["two-model agreement"]["value"] == pytest.approx(float(metric.compute()["agreement_cosine_mean"]))
        assert row["two-model agreement"] == pytest.approx(bootstrap(metric.per_sample(), nan_mean).as_dict())
        copying = TwoModelAgreement()  # the empirical denoiser's own halves at the same N, beside it
        copying.update(made[size, "half_a"][1], made[size, "half_b"][1])
        assert row["empirical's two-model agreement"] == pytest.approx(bootstrap(copying.per_sample(), nan_mean).as_dict())
    assert table[0]["r2 vs empirical"] > table[1]["r2 vs empirical"]  # the copies sit closer to the memorizer
    assert "Training-set size" in (out / "report.md").read_text()
    assert not (out / "report_n.png").exists()  # figure=false: no figures (tests/test_study_parallel.py draws it)


def test_show_split_keeps_one_data_half_in_the_table_while_the_halves_still_pair_up(tmp_path):
    gen = np.random.default_rng(1)
    for split in ("half_a", "half_b"):
        samples = gen.normal(size=(6, 1, 4, 4)).astype(np.float32)
        fake_run(tmp_path / split / "paper", "paper", "unet", "sgd", 100, split, samples, 0.0)
    out = tmp_path / "report"
    result = report(report_config(f"sweep={tmp_path}", f"out={out}", "show_split=half_a", "figure=false"))
    (row,) = result["rows"]
    assert row["split"] == "half_a" and row["agreement"] is not None  # paired with half_b, which is not shown
    with pytest.raises(UserError, match="show_split=full: no run used that data half"):
        report(report_config(f"sweep={tmp_path}", f"out={out}", "show_split=full", "figure=false"))


def test_a_machine_scored_on_the_seeds_that_calibrated_it_is_marked_in_sample():
    gen = torch.Generator().manual_seed(2)
    chosen_on = np.array(calibration_seeds(0, 4))
    held_out = np.array(sample_seeds(0, 4))

    def run(name: str, family: str, fit: str, **config) -> Run:
        return Run(name, "full", {"denoiser": {"_target_": f"lightning_diff.denoisers.{family}.build", "fit": fit},
                                  **config}, name)

    machine = run("els", "local_score", "closed_form", calibrated_on={"seed": 0, "num_samples": 4})
    runs = [run("paper", "unet", "sgd"), machine, run("linear", "linear", "closed_form")]
    for seeds, marked in ((held_out, []), (chosen_on, ["els"])):
        made = {name: Generated(torch.randn(4, 1, 4, 4, generator=gen).double(), seeds, None) for name in ("paper", "els", "linear")}
        (result,) = explanations(runs, set(), lambda r, made=made: made[r.name]).values()
        assert result["in_sample"] == marked


def test_a_malformed_calibration_record_is_named():
    machine = Run("els", "full", {"calibrated_on": {"seed": "zero"}}, "runs/els")
    with pytest.raises(UserError, match=r"runs/els: calibrated_on=\{'seed': 'zero'\} is not a calibration record"):
        chose_on(machine, np.arange(3))


def test_a_variants_second_training_seed_is_named_apart_in_the_figure_and_explanations():
    runs = [Run("attention", "half_a", {"seed": seed}, f"runs/{seed}") for seed in (0, 1)]
    runs.append(Run("paper", "half_a", {"seed": 0}, "runs/paper"))
    assert list(labels_of(runs).values()) == ["attention (half_a, seed 0)", "attention (half_a, seed 1)", "paper (half_a)"]
