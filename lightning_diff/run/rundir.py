"""The run directory: what a finished run leaves behind for other tools.

```
<run dir>/
  checkpoints/last.ckpt   weights (EMA in state_dict, raw in current_model_state) + config
  samples.npz             samples (N, *data_shape), levels (descending grid), seeds
  run.json                resolved config, num_parameters, metrics, final measurement, paths, world size, nodes
  wandb_run_id            W&B run id, so a resumed or requeued run continues the same W&B run
  wandb/                  the W&B (offline) run
```

A run adopted from diffusers (``python -m lightning_diff.adopt``) has the first three: its checkpoint
holds ``state_dict`` only, and its run.json ``adopted`` (where the model came from) instead of
training's metrics, measurement, world size and nodes.
"""

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_diff.errors import UserError
from lightning_diff.run.atomic import atomic_write, atomic_write_text


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON whole or not at all, so readers never see half a file."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id: read from the run directory, or chosen once and stored there.

    A W&B sweep agent's id (``WANDB_RUN_ID``) is the one chosen when it is set, so the sweep
    sees its own run. The file is published with a hard link, which fails if it exists: when
    all ranks of a DDP job ask at once, the first id wins and every rank reads the same one.
    """
    path = run_dir / "wandb_run_id"
    if not path.is_file():
        chosen = (os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)) + "\n"
        atomic_write(path, lambda handle: handle.write(chosen.encode()), exclusive=True)
    return path.read_text().strip()


def save_samples(path: Path, samples: np.ndarray, levels: list[float], seeds: list[int]) -> None:
    """``samples`` plus the grid sampled along (descending, as used) and the per-sample seeds."""
    arrays = {
        "samples": samples,
        "levels": np.asarray(levels, dtype=np.float64),
        "seeds": np.asarray(seeds, dtype=np.uint64),
    }
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


@dataclass(frozen=True)
class SampleFile:
    """A sample file's arrays, checked: ``samples`` (N, *data_shape) finite, ``seeds`` (N,) when
    present, ``levels`` (the grid sampled, descending) when present."""

    path: Path
    samples: np.ndarray
    seeds: np.ndarray | None
    levels: np.ndarray | None


def read_sample_file(path: str | Path, need_seeds: bool = True) -> SampleFile:
    """The arrays of a sample file (``samples.npz`` of a run, or any ``.npz`` with them), or one
    :class:`UserError` naming the file and what is wrong with it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such sample file; give a run directory with samples.npz or an .npz file")
    try:
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in ("samples", "seeds", "levels") if name in stored.files}
            names = stored.files
    except Exception as err:  # a truncated or foreign file fails with zipfile's, pickle's or numpy's own errors
        raise UserError(f"{path} is not a readable .npz file ({type(err).__name__}: {err})") from err
    wanted = ("samples", "seeds") if need_seeds else ("samples",)
    missing = [name for name in wanted if name not in arrays]
    if missing:
        raise UserError(
            f"{path} has no array {' or '.join(map(repr, missing))} (it has: {', '.join(names) or 'nothing'}); write "
            "np.savez(path, samples=array, seeds=per_sample_seeds)"
        )
    samples, seeds, levels = arrays["samples"], arrays.get("seeds"), arrays.get("levels")
    if samples.ndim < 2 or samples.shape[0] == 0 or not np.issubdtype(samples.dtype, np.number):
        raise UserError(f"{path}: 'samples' has shape {samples.shape} and dtype {samples.dtype}; it must hold numbers, "
                        "at least one sample (N >= 1, *data_shape)")
    if not np.isfinite(samples).all():
        raise UserError(f"{path}: 'samples' holds NaN or infinite values; the model that drew them diverged")
    if seeds is not None and seeds.shape != (samples.shape[0],):
        raise UserError(f"{path} holds {samples.shape[0]} samples but seeds of shape {seeds.shape}: one seed per sample")
    if levels is not None and (levels.ndim != 1 or not np.isfinite(levels).all() or not ((levels > 0) & (levels < 1)).all()):
        raise UserError(f"{path}: 'levels' must be the grid sampled, noise variances in (0, 1); it holds {levels}")
    return SampleFile(path, samples, seeds, levels)
