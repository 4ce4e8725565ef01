"""Issue 23, item 6: ``python -m lightning_diff.dashboard`` builds a W&B workspace for a study
from the keys its runs logged, read from their offline run files (or through the W&B API)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO, require_system, run_module, train_config
from lightning_diff.calibrate import calibrate
from lightning_diff.compare import compare
from lightning_diff.dashboard import dashboard
from lightning_diff.errors import UserError
from lightning_diff.figures.workspace import layout
from lightning_diff.metrics.fid import KNOWN_WEIGHTS, package_file
from lightning_diff.run.cli import CONF_DIR
from lightning_diff.run.logged_keys import sweep_runs
from lightning_diff.training import train
from wandb_offline import finished_records

GROUP = "study-7"
RUN = [
    "data=digits", "data.num_train=60", "data.num_val=20", "denoiser=linear", "denoiser.fit=sgd",
    "diffusion.num_levels=3", "trainer.max_steps=4", "trainer.val_check_interval=2", "num_samples=4",
    "sample_seed=0", "logger=wandb", "callbacks.measure.every_n_steps=2", "callbacks.measure.num_samples=4",
    "callbacks.measure.grid_size=4",
]
# What each panel type shows, as W&B stores it, and the kind of logged value it needs.
NEEDS = {"Run History Line Plot": "number", "Bar Chart": "number", "Media Browser": "image-file", "Weave": "table-file"}
MEDIA_FOLDER = {"image-file": "images", "table-file": "table"}


def config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study as it lies on disk: two runs of GROUP (the first measures FID), a run of another
    group with a fourth noise level, and a compare and a calibrate run of GROUP's runs (no group)."""
    require_system("fid_weights")
    root = tmp_path_factory.mktemp("sweep")
    inception = package_file(KNOWN_WEIGHTS["torchscript"].package_file)
    fid = [f"metrics.features.weights={inception}", "metrics.reference.count=4", "metrics.prdc.nearest_k=2",
           "callbacks.measure.every_n_steps=0"]  # Inception embeds about 6 images/s on 2 cores: once, 4 + 4 images
    train(train_config(root / "0", *RUN, f"logger.group={GROUP}", *fid))
    no_fid = [f"metrics.{name}.enabled=false" for name in ("fid", "kid", "prdc")]
    train(train_config(root / "1", *RUN, f"logger.group={GROUP}", "seed=1", *no_fid))
    train(train_config(root / "2", *RUN, "logger.group=other", "diffusion.num_levels=4", *no_fid))
    compare(config("compare", f"a={root / '0'}", f"b={root / '1'}", f"out={root / 'compare' / 'r2.json'}", "wandb=true"))
    calibrate(config("calibrate", f"ref={root / '0'}", "candidates=[1,3]", "num_samples=4", "padding=zeros",
                     f"out={root / 'calibration'}", "wandb=true"))
    return root


def logged(sweep: Path) -> list[tuple[Any, dict[str, Any], Path]]:
    """Each W&B run file below ``sweep``, read here: its run record, every key's last logged value
    (a logged object as the dict W&B stores for it) and the run's folder."""
    found = []
    for path in sorted(sweep.rglob("run-*.wandb")):
        run, values = None, {}
        for record in finished_records(path):
            which = record.WhichOneof("record_type")
            run = record.run if which == "run" else run
            items = {"history": record.history.item, "summary": record.summary.update}.get(which, [])
            for item in items:
                top, *rest = [item.key] if item.key else list(item.nested_key)
                if rest:
                    values.setdefault(top, {})[rest[0]] = json.loads(item.value_json)
                else:
                    values[top] = json.loads(item.value_json)
        found.append((run, values, path.parent))
    return found


def panel_keys(spec: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Section name -> (view type, key) of each panel, read from the specification's JSON."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for section in spec["spec"]["section"]["panelBankConfig"]["sections"]:
        shown = sections.setdefault(section["name"], [])
        for panel in section["panels"]:
            view, settings = panel["viewType"], panel["config"]
            if view == "Weave":
                keys = [settings["panel2Config"]["exp"]["fromOp"]["inputs"]["key"]["val"]]
            else:
                keys = settings.get("metrics", []) + settings.get("mediaKeys", [])
            shown += [(view, key) for key in keys]
            if settings.get("xAxis", "_step") != "_step":
                shown.append(("x axis", settings["xAxis"]))
    return sections


def kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("_type", "other")
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else "other"


@pytest.mark.slow
def test_every_panel_names_a_key_the_groups_runs_logged(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "spec.json"
    result = run_module("lightning_diff.dashboard", f"sweep={sweep}", f"group={GROUP}", f"out={out}")
    assert result.returncode == 0, result.stderr
    assert f"workspace specification: {out}" in result.stdout
    spec = json.loads(out.read_text())
    runs = logged(sweep)
    shown = [(run, values, folder) for run, values, folder in runs if run.run_group == GROUP or not run.run_group]
    assert {run.job_type for run, _, _ in shown if not run.run_group} == {"compare", "calibrate"}
    sections = panel_keys(spec)
    for view, key in [item for panels in sections.values() for item in panels]:
        logged_as = {kind(values[key]) for _, values, _ in shown if key in values}
        assert logged_as == {NEEDS.get(view, "number")}, f"{view} panel of {key!r}: logged as {logged_as or 'nothing'}"
        if view in ("Media Browser", "Weave"):  # W&B wrote the picture or table itself, as a file
            media = [folder / "files" / "media" / MEDIA_FOLDER[NEEDS[view]] for _, _, folder in shown]
            assert any(folder.glob(f"{key}_*") for folder in media), key

    keys = {name: {key for view, key in panels if view != "x axis"} for name, panels in sections.items()}
    assert keys["Validation loss per level"] == {"val/loss", "val/loss_level_0", "val/loss_level_1", "val/loss_level_2"}
    realism = ("measure/fid", "measure/kid", "measure/precision", "measure/recall", "measure/density", "measure/coverage")
    assert {key for _, values, _ in shown for key in values if key.startswith(realism)} <= keys["Realism"]
    assert keys["Realism"] and keys["Memorization"] == {
        "measure/memorized_fraction", "measure/memorized_fraction_low", "measure/memorized_fraction_high", "measure/d1_median"
    }
    assert {"measure/samples", "measure/nearest"} == keys["Sample grids"]
    assert {"r2_samples_median", "pearson_r_samples_median", "compare/grid", "calibrate/r2_best_level_0",
            "calibrate/patch_size_level_2", "calibrate/r2_per_patch_size"} <= keys["Agreement and explanation r²"]
    assert keys["Tables"] == {"measure/per_sample"}
    # Logged, but none of the quantities the dashboard is for: counts, other d1 statistics, steps, histograms.
    not_shown = {"measure/num_samples", "measure/d1_mean", "measure/d1_q05", "epoch", "measure/d1_histogram",
                 "class_optimum/excess_val_loss_level_0"}
    assert not_shown <= {key for _, values, _ in shown for key in values}
    assert not not_shown & set().union(*keys.values())

    filters = json.dumps(spec["spec"]["section"]["runSets"][0]["filters"])
    assert GROUP in filters and "other" not in filters
    for run, _, _ in runs:  # compare and calibrate record no group: they are shown by their ids
        assert (run.run_id in filters) == (not run.run_group), (run.run_id, run.run_group)


@pytest.mark.slow
def test_without_a_group_every_run_of_the_sweep_is_shown(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = dashboard(config("dashboard", f"sweep={sweep}", "project=me/study"))
    assert result["out"] == Path(f"dashboard-{sweep.name}.json") and result["out"].is_file()  # two groups: the folder's name
    spec = result["spec"]
    assert (spec["entity"], spec["project"], spec["displayName"]) == ("me", "study", f"lightning_diff {sweep.name}")
    assert ("Run History Line Plot", "val/loss_level_3") in panel_keys(spec)["Validation loss per level"]
    filters = json.dumps(spec["spec"]["section"]["runSets"][0]["filters"])
    assert GROUP in filters and "other" in filters


@pytest.mark.slow
def test_keys_read_through_the_wandb_api_give_the_same_panels(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    # W&B's service as the API sees it, built from the same runs: every run's summary holds each key it logged.
    served = [SimpleNamespace(id=run.run_id, group=run.run_group, job_type=run.job_type, summary=values)
              for run, values, _ in logged(sweep)]
    asked = {}

    class ApiOfTheseRuns:
        def runs(self, project: str, filters: dict[str, Any]) -> list[SimpleNamespace]:
            asked.update(project=project, filters=filters)
            return [run for run in served if run.group == GROUP or run.job_type in ("compare", "calibrate")]

    monkeypatch.setattr(wandb, "Api", ApiOfTheseRuns)
    online = dashboard(config("dashboard", f"group={GROUP}", f"out={tmp_path / 'online.json'}"))["spec"]
    offline = dashboard(config("dashboard", f"sweep={sweep}", f"group={GROUP}", f"out={tmp_path / 'offline.json'}"))["spec"]
    assert asked == {"project": "lightning_diff",
                     "filters": {"$or": [{"group": GROUP}, {"jobType": {"$in": ["compare", "calibrate"]}}]}}
    assert panel_keys(online) == panel_keys(offline)
    filters = json.dumps(online["spec"]["section"]["runSets"][0]["filters"])
    assert GROUP in filters and "calibrate" in filters and "compare" in filters  # later compare runs show too


@pytest.mark.slow
def test_saving_without_a_wandb_account_names_wandb_login(sweep: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("WANDB_API_KEY", "NETRC")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path), WANDB_MODE="offline")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_diff.dashboard", f"sweep={sweep}", "save=true"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "`wandb login`" in result.stderr and "Traceback" not in result.stderr


def test_bad_input_gets_one_line_naming_the_fix(tmp_path: Path) -> None:
    result = run_module("lightning_diff.dashboard", f"sweep={tmp_path / 'missing'}")
    assert result.returncode == 2 and result.stderr.startswith(f"error: sweep={tmp_path / 'missing'}: no such directory")
    assert "Traceback" not in result.stderr
    result = run_module("lightning_diff.dashboard", "grup=x")
    assert result.returncode == 2 and "grup=x" in result.stderr
    with pytest.raises(UserError, match="give group=<the runs' logger.group>"):
        dashboard(config("dashboard"))
    with pytest.raises(UserError, match="holds no W&B run file"):
        dashboard(config("dashboard", f"sweep={tmp_path}"))
    with pytest.raises(UserError, match="project=a/b/c: give PROJECT or ENTITY/PROJECT"):
        dashboard(config("dashboard", f"sweep={tmp_path}", "project=a/b/c"))
    damaged = tmp_path / "damaged" / "wandb" / "offline-run-x" / "run-x.wandb"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"half a download")
    with pytest.raises(UserError, match=f"{damaged} is not a readable W&B run file .*; remove it or its run directory"):
        dashboard(config("dashboard", f"sweep={tmp_path / 'damaged'}"))
    with pytest.raises(UserError, match="save=ture: give true"):
        dashboard(config("dashboard", f"sweep={tmp_path}", "save=ture"))
    with pytest.raises(UserError, match="job_types=compare: give a list"):
        dashboard(config("dashboard", f"sweep={tmp_path}", "job_types=compare"))


@pytest.mark.slow
def test_a_resumed_run_is_one_run(sweep: Path, tmp_path: Path) -> None:
    (first,) = (sweep / "0" / "wandb").glob("offline-run-*")
    for attempt in ("offline-run-1", "offline-run-2"):  # a requeued job continues the same W&B run in a new folder
        shutil.copytree(first, tmp_path / "0" / "wandb" / attempt)
    (run,) = sweep_runs(tmp_path)
    assert run.group == GROUP and "val/loss_level_2" in run.keys


@pytest.mark.slow
def test_a_group_the_sweep_does_not_hold_is_named_with_the_groups_it_does(sweep: Path) -> None:
    with pytest.raises(UserError, match=f"holds no run of group 'nope' \\(its groups: other, {GROUP}\\)"):
        dashboard(config("dashboard", f"sweep={sweep}", "group=nope"))


def test_metrics_are_placed_by_pattern_so_new_ones_get_panels() -> None:
    number = "number"
    keys = {
        **{key: number for key in ("measure/kid@64", "measure/kid_std@64", "measure/precision@64", "measure/recall",
                                   "measure/density", "measure/coverage", "eval/fid@1000",
                                   "measure/memorized_fraction_low", "measure/memorized_fraction_high",
                                   "measure/memorized_fraction", "val/loss_level_10", "val/loss_level_2")},
        # Not shown: counts, other quantiles, steps, near-miss names, other metrics, histograms.
        **{key: number for key in ("measure/num_samples", "measure/d1_q05", "trainer/global_step", "epoch",
                                   "measure/fidelity", "class_optimum/excess_val_loss_level_0", "val/loss_level_x")},
        "measure/d1_histogram": "histogram",
        "measure/samples": "image-file",
        "report/table": "table-file",
    }
    sections = {name: [(panel.panel, panel.key) for panel in panels] for name, panels in layout(keys).items()}
    assert sections == {
        "Validation loss per level": [("line", "val/loss_level_2"), ("line", "val/loss_level_10")],
        "Realism": [("line", "measure/coverage"), ("line", "measure/density"), ("line", "measure/kid@64"),
                    ("line", "measure/kid_std@64"), ("line", "measure/precision@64"), ("line", "measure/recall"),
                    ("bar", "eval/fid@1000")],
        "Memorization": [("line", "measure/memorized_fraction"), ("line", "measure/memorized_fraction_high"),
                         ("line", "measure/memorized_fraction_low")],
        "Sample grids": [("media", "measure/samples")],
        "Tables": [("table", "report/table")],
    }
