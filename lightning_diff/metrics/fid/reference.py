"""The reference (training-image) statistics: embedded once, sharded over DDP ranks, and cached
on disk keyed by the data config, the images' content and the feature network."""

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_diff.errors import UserError
from lightning_diff.metrics.fid.metric import FID, FeatureMoments
from lightning_diff.metrics.fid.weights import REFERENCE_SUBDIR, SETTINGS_KEY, FeatureSource
from lightning_diff.progress import with_progress
from lightning_diff.run.cache import cache_dir
from lightning_diff.run.checkpoint import atomic_torch_save


def reference_cache_path(
    source: FeatureSource, images: Tensor, data_config: Mapping[str, Any], cache: Path | None = None
) -> Path:
    """Cache file of the reference statistics of ``images`` under ``source``'s network."""
    content = hashlib.sha256(images.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    data = {key: value for key, value in data_config.items() if key != "batch_size"}
    key = json.dumps(
        {"data": data, "images": content, "shape": list(images.shape), "features": source.identity()},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return (cache or cache_dir()) / REFERENCE_SUBDIR / f"{source.name}-{digest}.pt"


def _everyone_has(path: Path, device: torch.device) -> bool:
    """Whether ``path`` exists on every process (each node may have its own cache)."""
    present = torch.tensor(1 if path.is_file() else 0, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(present, op=dist.ReduceOp.MIN)
    return bool(present.item())


def _load_moments(path: Path) -> FeatureMoments:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureMoments(stored["total"], stored["outer"], int(stored["count"]))
    except Exception as err:
        raise UserError(f"the cached FID reference statistics {path} are unreadable ({err}); delete the file") from err


def _save_moments(path: Path, moments: FeatureMoments, description: Mapping[str, Any]) -> None:
    payload = {
        "total": moments.total,
        "outer": moments.outer,
        "count": moments.count,
        "description": json.dumps(description, default=str),
    }
    atomic_torch_save(payload, path)


def prepare_reference(
    metric: FID,
    images: Tensor,
    source: FeatureSource,
    data_config: Mapping[str, Any],
    cache: Path | None = None,
    progress: bool = True,
) -> Path:
    """Give ``metric`` the reference statistics of ``images``: from the cache, or embedded
    (each process a share of the images) and then cached. Returns the cache file."""
    path = reference_cache_path(source, images, data_config, cache)
    device = metric.real_features_sum.device
    if _everyone_has(path, device):
        metric.set_reference(_load_moments(path))
        return path
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    share = images[rank * images.shape[0] // world : (rank + 1) * images.shape[0] // world]
    metric.real_features_sum.zero_()
    metric.real_features_cov_sum.zero_()
    metric.real_features_num_samples.zero_()
    batches = share.split(metric.batch_size)
    bar = with_progress(batches, desc=f"{metric.base_name}: reference images", disable=not progress or rank != 0)
    for batch in bar:
        metric.update(batch.to(device), real=True)
    moments = metric.reference()
    if rank == 0:
        description = {"data": dict(data_config), "features": source.identity(), "count": images.shape[0]}
        _save_moments(path, moments, description)
    return path


def reference_images(train: Tensor, count: int | None) -> Tensor:
    """The first ``count`` training images (the training set is already a seeded random subset)."""
    if count is not None and count < 2:
        raise UserError(f"{SETTINGS_KEY}.reference_count={count} must be >= 2 (or null for the whole training set)")
    return train if count is None else train[: min(count, train.shape[0])]
