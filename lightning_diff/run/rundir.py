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
from pathlib import Path
from typing import Any

import numpy as np

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
