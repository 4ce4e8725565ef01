"""``python -m lightning_diff.evaluate ckpt=PATH``, ``samples=FILE.npz data=<name>`` or
``training_images=N data=<name>``: every metric as one JSON object.

The samples are drawn from a checkpoint (fixed per-sample seeds, EMA weights by default), read
from an ``.npz`` (array ``samples``, N x data shape), or are N training images of the data
config measured as if they were samples: the data's own scores, the reference row of a study
(what "as realistic as the data" reads). They are measured against the training set of the data
config (``data=...``, or the checkpoint's own) with the top-level ``metrics`` settings:
``memorized_fraction``, ``d1_median`` and the other d1 quantiles, for images ``fid@<n>``,
``kid@<n>``, ``precision@<n>``, ... against held-out images when the feature network's weights are
found, the distribution distances for synthetic data, and ``agreement_cosine_mean`` against a
second model with ``compare=``. With ``training_images=N as_run=DIR`` the result is also written as
``DIR/run.json``, the data's reference row in a report of the sweep holding DIR. The JSON goes to stdout (progress and warnings to stderr), to
``out=FILE`` when given, and with ``wandb=true`` into the run's W&B run under ``eval/``.
"""

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from lightning_diff.compose import build, plain
from lightning_diff.errors import UserError
from lightning_diff.metrics.agreement import TwoModelAgreement
from lightning_diff.metrics.suite import MetricSuite, plan_measurement
from lightning_diff.progress import with_progress
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.rundir import read_sample_file, wandb_run_id, write_json_atomic
from lightning_diff.run.study import read_run_dir
from lightning_diff.run.wandb_log import log_to_wandb
from lightning_diff.seeding import sample_seeds, seeded_subset
from lightning_diff.trained import TrainedRun

DEFAULT_PROJECT = "lightning_diff"
_TRAINING_IMAGES_STREAM = 0x7A1


def read_samples(path: str | Path) -> torch.Tensor:
    """The ``samples`` array of an ``.npz`` file, as float32, checked (:func:`read_sample_file`)."""
    return torch.from_numpy(np.asarray(read_sample_file(path, need_seeds=False).samples, dtype=np.float32))


def checkpoint_samples(cfg: DictConfig, ckpt: str | Path, count: int) -> tuple[torch.Tensor, TrainedRun]:
    """``count`` samples of a run from the seeds ``derive_seed(cfg.seed, i)``, and the run."""
    run = TrainedRun.load(ckpt, cfg.weights)
    sampler = build(cfg.sampler, "sampler") if cfg.get("sampler") else run.sampler
    samples = run.draw(sample_seeds(int(cfg.seed), count), sampler=sampler, device=cfg.device, progress=bool(cfg.progress))
    return samples, run


def _agreement(cfg: DictConfig, samples: torch.Tensor) -> dict[str, float]:
    other_path = Path(cfg.compare).expanduser()
    if other_path.suffix == ".npz":
        other = read_samples(other_path)
    else:
        other, _ = checkpoint_samples(cfg, other_path, samples.shape[0])
    if other.shape != samples.shape:
        raise UserError(
            f"compare={other_path} gives samples of shape {tuple(other.shape)}, these are {tuple(samples.shape)}; "
            "compare the same number of samples from the same seeds"
        )
    metric = TwoModelAgreement()
    metric.update(samples, other)
    return {key: float(value) for key, value in metric.compute().items()}


def training_images(datamodule: Any, count: int, seed: int) -> torch.Tensor:
    """A seeded choice of ``count`` of the datamodule's training images, to measure as samples."""
    train = datamodule.train_data
    if not 1 <= count <= train.shape[0]:
        raise UserError(
            f"training_images={count} must be between 1 and the {train.shape[0]} training images of this data; "
            "lower it, or raise data.num_train"
        )
    return train[seeded_subset(train.shape[0], count, seed, _TRAINING_IMAGES_STREAM)]


def data_config(cfg: DictConfig) -> dict[str, Any]:
    """The data that samples or training images are measured against: ``data=<name>``, or the data a
    finished run was trained on (``data_of=RUN_DIR``, e.g. a study's reference row)."""
    if cfg.get("data_of"):
        return read_run_dir(Path(str(cfg.data_of)).expanduser()).config.get("data") or {}
    if not cfg.get("data"):
        what = f"samples={cfg.samples}" if cfg.get("samples") is not None else f"training_images={cfg.training_images}"
        raise UserError(
            f"{what} needs the data they are measured against: add data=<name> (e.g. data=digits) or "
            "data_of=<a run directory trained on them>"
        )
    return plain(cfg.data)


def what_to_measure(cfg: DictConfig) -> tuple[torch.Tensor, Any, str, str]:
    """The samples ``cfg`` names, the datamodule they are measured against, the W&B project and
    how the result names its source."""
    named = [key for key in ("ckpt", "samples", "training_images") if cfg.get(key) is not None]
    if len(named) != 1:
        raise UserError(
            "give exactly one of ckpt=PATH (samples are drawn from it), samples=FILE.npz, or training_images=N "
            "(the data's own scores)"
        )
    if cfg.get("ckpt") is not None:
        count = int(cfg.num_samples)
        if count < 1:
            raise UserError(f"num_samples={count} must be at least 1")
        samples, run = checkpoint_samples(cfg, cfg.ckpt, count)
        project = (run.config.get("logger") or {}).get("project") or DEFAULT_PROJECT
        datamodule = build(plain(cfg.data), "data") if cfg.get("data") else run.datamodule()
        return samples, datamodule, project, str(cfg.ckpt)
    datamodule = build(data_config(cfg), "data")
    if cfg.get("samples") is not None:
        return read_samples(cfg.samples), datamodule, DEFAULT_PROJECT, str(cfg.samples)
    count = int(cfg.training_images)
    images = training_images(datamodule, count, int(cfg.seed))
    return images, datamodule, DEFAULT_PROJECT, f"training_images={count}"


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """All metrics of the samples ``cfg`` names, as a flat dict (also printed and written)."""
    samples, datamodule, project, source = what_to_measure(cfg)
    is_image = bool(datamodule.is_image)
    plan = plan_measurement(plain(cfg.metrics), datamodule, is_image)
    for note in plan.notes:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    device = torch.device(cfg.device)
    suite = MetricSuite(plan, datamodule.train_data, samples.shape[0]).to(device)
    suite.prepare(progress=bool(cfg.progress))
    batch_size = int(cfg.batch_size)
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1")
    chunks = range(0, samples.shape[0], batch_size)
    for start in with_progress(chunks, desc="evaluate", disable=not cfg.progress):
        stop = min(start + batch_size, samples.shape[0])
        suite.update(samples[start:stop].to(device), index=torch.arange(start, stop))
    result: dict[str, Any] = dict(suite.compute())
    if cfg.get("compare") is not None:
        result.update(_agreement(cfg, samples))
    result["num_samples"] = int(samples.shape[0])
    result["source"] = source
    text = json.dumps(result, sort_keys=True)
    print(text, flush=True)
    if cfg.get("out"):
        write_json_atomic(Path(cfg.out).expanduser(), result)
    if cfg.get("as_run"):
        write_reference_row(cfg, result)
    if cfg.get("wandb"):
        _log_to_wandb(cfg, result, project)
    return result


def write_reference_row(cfg: DictConfig, result: dict[str, Any]) -> Path:
    """``<as_run>/run.json`` of the training images measured as samples: a report of the sweep
    holding it shows the data's own scores as a row (what "as realistic as the data" reads)."""
    if cfg.get("training_images") is None:
        raise UserError("as_run= writes the training images' reference row: use it with training_images=N data=<name>")
    path = Path(str(cfg.as_run)).expanduser() / "run.json"
    summary = {
        "config": {"variant": "training images", "data": data_config(cfg), "seed": int(cfg.seed)},
        "measure": {key: value for key, value in result.items() if isinstance(value, (int, float))},
    }
    write_json_atomic(path, summary)
    return path


def _log_to_wandb(cfg: DictConfig, result: dict[str, Any], project: str) -> None:
    """Add the metrics under ``eval/`` to the W&B run of the run directory."""
    if cfg.get("run_dir"):
        run_dir = Path(cfg.run_dir).expanduser()
    elif cfg.get("ckpt"):
        given = Path(cfg.ckpt).expanduser().resolve()
        run_dir = given if given.is_dir() else given.parent.parent
    else:
        raise UserError("wandb=true with samples= needs run_dir=<the run directory> to find its W&B run")
    if not run_dir.is_dir():
        raise UserError(f"run_dir={run_dir} is not a directory; give the training run's directory")
    numbers = {f"eval/{key}": value for key, value in result.items() if isinstance(value, (int, float))}
    log_to_wandb(project, run_dir, numbers, run_id=wandb_run_id(run_dir))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: evaluate(cfg))


if __name__ == "__main__":
    check_command_line("evaluate")
    main()
