"""Read what an offline W&B run recorded, without network or the W&B service: the package's
reader (lightning_diff.run.wandb_records), plus where a lightning_diff run keeps its W&B runs."""

import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

from lightning_diff.run.wandb_records import records, run_record

__all__ = ["finished_records", "offline_runs", "records", "run_record"]


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run directories under a lightning_diff run directory."""
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def finished_records(path: Path, timeout_s: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """The records of a run file once W&B's service has written its exit record: ``wandb.finish``
    can return while the service still holds the file's tail, so a read may end mid-record."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = list(records(path))
        if (found and found[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
