"""Numbers and images into a W&B run from outside training: evaluate (into the training run),
compare and calibrate (a run of their own); and the W&B API that reads runs back. Offline unless WANDB_MODE says otherwise, like the
training logger, so no account or network is needed; ``wandb sync`` uploads later."""

import os
from pathlib import Path
from typing import Any

from lightning_diff.errors import UserError


def log_to_wandb(
    project: str,
    directory: Path,
    numbers: dict[str, float],
    images: dict[str, Path] | None = None,
    *,
    run_id: str | None = None,
    job_type: str | None = None,
    name: str | None = None,
) -> Path:
    """Log ``numbers`` (also into the summary) and PNG ``images`` under their keys into the run
    ``run_id`` (resumed) or a new run of ``job_type``; returns the W&B run's folder."""
    import wandb  # only when asked: compare and calibrate run without wandb otherwise

    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        id=run_id,
        resume="allow" if run_id else None,
        job_type=job_type,
        name=name,
        dir=str(directory),
        mode=os.environ.get("WANDB_MODE", "offline"),
    )
    try:
        logged: dict[str, Any] = dict(numbers)
        logged.update({key: wandb.Image(str(path)) for key, path in (images or {}).items()})
        run.log(logged)
        run.summary.update(numbers)
        return Path(run.dir).parent
    finally:
        run.finish()


def wandb_api(group: str, instead: str) -> Any:
    """The W&B public API, or one :class:`UserError` saying what reading ``group`` needs and what to
    do ``instead`` without network."""
    import wandb

    try:
        return wandb.Api()
    except Exception as err:  # wandb raises its own types for missing keys and no network
        raise UserError(
            f"cannot reach W&B to read group {group!r} ({err}); log in with `wandb login` on a machine with "
            f"network, or {instead}"
        ) from err
