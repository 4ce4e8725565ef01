"""Checkpoints that are written atomically and read without running code.

Writing goes through :func:`~lightning_diff.run.atomic.atomic_write`: a crash mid-write leaves
the previous checkpoint intact. Reading always uses
``torch.load(weights_only=True)``, which refuses pickled objects that could run code, so a
checkpoint from a colleague is safe to open; the run's config is stored as plain data.
"""

import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_diff.errors import UserError
from lightning_diff.run.atomic import atomic_write

CONFIG_KEY = "lightning_diff"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path``, written whole or not at all."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely, or raise one clear :class:`UserError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass ckpt=<run dir>/checkpoints/last.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err) and "Unsupported class" not in str(err):
            raise UserError(f"{path} is not a readable PyTorch checkpoint ({str(err).splitlines()[0]})") from err
        raise UserError(
            f"refused to load {path}: it contains pickled objects that could run code when loaded "
            "(only tensors and plain data are accepted). Re-save it from a trusted run with "
            "lightning_diff, or extract the weights in a sandbox you trust."
        ) from err
    except Exception as err:  # a corrupt legacy pickle fails with any error type (KeyError, IndexError, ...)
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); "
            "it may be truncated or not a checkpoint at all"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is a PyTorch file but not a lightning_diff checkpoint (no 'state_dict')")
    return checkpoint


def run_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The plain-data description of the run stored in a lightning_diff checkpoint."""
    if CONFIG_KEY not in checkpoint:
        raise UserError(f"{path} was not written by lightning_diff (no '{CONFIG_KEY}' entry); train with it first")
    return checkpoint[CONFIG_KEY]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with atomic writes and code-free reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path)
