"""Read what an offline W&B run recorded, without network or the W&B service: the package's
reader (lightning_diff.run.wandb_records), plus where a lightning_diff run keeps its W&B runs."""

from pathlib import Path

from lightning_diff.run.wandb_records import records, run_record

__all__ = ["offline_runs", "records", "run_record"]


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run directories under a lightning_diff run directory."""
    return sorted((run_dir / "wandb").glob("offline-run-*"))
