"""The start and end of a run: opening its W&B run while a requeued job's previous attempt
still holds the ID; at the end, also on error, finishing it and leaving the process group."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# A requeued SLURM job can start while the previous attempt's W&B process still flushes the
# same run, and W&B refuses the run ID until it lets go (seconds).
WANDB_ID_WAIT_S = 120.0
WANDB_ID_POLL_S = 2.0


def open_wandb_run(logger: Any) -> None:
    """Start the logger's W&B run now, waiting while an earlier attempt of this run still holds its ID."""
    deadline = time.monotonic() + WANDB_ID_WAIT_S
    while True:
        try:
            logger.experiment
            return
        except Exception as err:  # wandb raises its own ServerResponseError type
            if "is in use" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(WANDB_ID_POLL_S)


@contextmanager
def run_finished(logger: Any) -> Iterator[None]:
    """When the block ends: finish the W&B run (exit code 0 if the block completed, 1 if it
    raised) and leave the DDP process group, so a rank's process holds no sockets or threads
    after its run (a ``ddp_spawn`` rank, a notebook that trains twice)."""
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        if logger:
            import wandb  # only with a logger: a run with logger=none needs no wandb installed

            wandb.finish(exit_code=0 if succeeded else 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
