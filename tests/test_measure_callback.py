"""The measuring callback: what a training run leaves in its offline W&B run, and how it
behaves without FID weights or with a bad metric setting."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_system, train_config
from lightning_diff.callbacks.measure import TABLE_COLUMNS
from lightning_diff.errors import UserError
from lightning_diff.metrics.fid import KNOWN_WEIGHTS, package_file
from lightning_diff.run.cache import file_digest
from lightning_diff.training import train
from wandb_offline import finished_records

QUICK = [
    "data=digits",
    "data.num_train=60",
    "data.num_val=20",
    "denoiser=linear",
    "denoiser.fit=sgd",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "num_samples=4",
]


def history_rows(run_dir: Path) -> list[dict]:
    """Every logged history row of the run's offline W&B run: {key: decoded value}."""
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = []
    for record in finished_records(log):
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return rows


@pytest.mark.slow
def test_training_run_leaves_measurements_in_the_offline_wandb_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inception = package_file(KNOWN_WEIGHTS["torchscript"].package_file)
    require_system("fid_weights")
    monkeypatch.setenv("LIGHTNING_DIFF_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    cfg = train_config(
        run_dir,
        *QUICK,
        "logger=wandb",
        "callbacks.measure.every_n_steps=2",
        "callbacks.measure.num_samples=8",
        "callbacks.measure.grid_size=8",
        f"metrics.features.weights={inception}",
        "metrics.reference.count=8",
    )
    train(cfg)

    rows = [row for row in history_rows(run_dir) if "measure/memorized_fraction" in row]
    assert [row["trainer/global_step"] for row in rows] == [2, 4]  # every 2 steps; the end is step 4
    last = rows[-1]
    assert 0.0 <= last["measure/memorized_fraction"] <= 1.0
    # digits has no test split: realism is read against training images, and the names say so.
    assert last["measure/fid_train@8"] > 0
    assert {"measure/kid_train@8", "measure/kid_std_train@8", "measure/precision_train@8"} <= set(last)
    assert last["measure/d1_median"] > 0
    assert last["measure/d1_histogram/_type"] == "histogram"  # W&B stores logged objects as nested keys

    files = next(run_dir.glob("wandb/offline-run-*/files"))
    for key, min_width in (("samples", 8 * 64), ("nearest", 4 * 2 * 64)):
        assert last[f"measure/{key}/_type"] == "image-file"
        with Image.open(files / last[f"measure/{key}/path"]) as picture:
            assert picture.format == "PNG" and picture.width >= min_width
        assert len(list((files / "media" / "images" / "measure").glob(f"{key}_*.png"))) == 2  # one per measurement
    assert last["measure/per_sample/_type"] == "table-file"
    table_file = files / last["measure/per_sample/path"]
    table = json.loads(table_file.read_text())
    assert table["columns"] == TABLE_COLUMNS
    assert [row[0] for row in table["data"]] == list(range(8))
    memorized = [row[TABLE_COLUMNS.index("memorized")] for row in table["data"]]
    assert sum(memorized) / 8 == pytest.approx(last["measure/memorized_fraction"])
    d1 = [row[TABLE_COLUMNS.index("d1")] for row in table["data"]]
    assert float(np.median(d1)) == pytest.approx(last["measure/d1_median"], rel=1e-6)


def test_no_fid_weights_gives_one_warning_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_DIFF_CACHE", str(tmp_path / "empty_cache"))
    cfg = train_config(tmp_path / "run", *QUICK, "callbacks.measure.num_samples=4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg)
    about_fid = [w for w in caught if "FID is skipped" in str(w.message)]
    assert len(about_fid) == 1
    assert "prefetch" in str(about_fid[0].message) and "LIGHTNING_DIFF_CACHE" in str(about_fid[0].message)
    assert summary["global_step"] == 4 and (tmp_path / "run" / "run.json").is_file()


def test_cached_fid_weights_with_the_wrong_checksum_give_one_warning_and_no_fid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    damaged = cache / "fid" / KNOWN_WEIGHTS["torchscript"].filename
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"half a download")
    monkeypatch.setenv("LIGHTNING_DIFF_CACHE", str(cache))
    cfg = train_config(tmp_path / "run", *QUICK, "callbacks.measure.num_samples=4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg)
    about_fid = [str(w.message) for w in caught if "FID is skipped" in str(w.message)]
    assert len(about_fid) == 1
    assert f"{damaged} has sha256 {file_digest(damaged)}, expected {KNOWN_WEIGHTS['torchscript'].checksum[7:]}" in about_fid[0]
    assert summary["global_step"] == 4 and not any(key.startswith("fid@") for key in summary["measure"])


def test_bad_measure_settings_stop_the_run_before_training(tmp_path: Path) -> None:
    cfg = train_config(tmp_path / "run", *QUICK, "+metrics.inception_score.enabled=true")
    with pytest.raises(UserError, match="metrics.inception_score: no metric of that name; the declared metrics are"):
        train(cfg)
    cfg = train_config(tmp_path / "run2", *QUICK, "metrics.features.weights=/nonexistent/inception.pt")
    with pytest.raises(UserError, match="metrics.features.weights=/nonexistent/inception.pt: no such file"):
        train(cfg)
    assert not (tmp_path / "run2" / "checkpoints" / "last.ckpt").exists()
