"""The reference images' features: embedded once (each DDP process a share), then cached on disk
keyed by what they are (the images' content and the feature network), so every run measured
against the same images reuses them."""

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_diff.errors import UserError
from lightning_diff.metrics.fid.embedding import ImageFeatures
from lightning_diff.metrics.fid.weights import REFERENCE_SUBDIR, FeatureSource
from lightning_diff.progress import with_progress
from lightning_diff.run.cache import cache_dir
from lightning_diff.run.checkpoint import atomic_torch_save


def reference_cache_path(source: FeatureSource, images: Tensor, cache: Path | None = None) -> Path:
    """Cache file of the features of ``images`` under ``source``'s network."""
    content = hashlib.sha256(images.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    key = json.dumps(
        {"images": content, "shape": list(images.shape), "features": source.identity()}, sort_keys=True, default=str
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return (cache or cache_dir()) / REFERENCE_SUBDIR / f"{source.name}-{digest}.pt"


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share_of_this_process(rows: Tensor) -> Tensor:
    """This process's contiguous share of ``rows`` (all of them without DDP): the shares of the
    processes in rank order make up ``rows``, so states concatenated over processes keep its order."""
    rank, world = _distributed()
    return rows[rank * rows.shape[0] // world : (rank + 1) * rows.shape[0] // world]


def _everyone_has(path: Path, device: torch.device) -> bool:
    """Whether ``path`` exists on every process (each node may have its own cache)."""
    present = torch.tensor(1 if path.is_file() else 0, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(present, op=dist.ReduceOp.MIN)
    return bool(present.item())


def _load(path: Path) -> Tensor:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["features"]
    except Exception as err:
        raise UserError(f"the cached reference features {path} are unreadable ({err}); delete the file") from err


def reference_features(
    embed: ImageFeatures,
    images: Tensor,
    source: FeatureSource,
    description: Mapping[str, Any],
    cache: Path | None = None,
    progress: bool = True,
) -> Tensor:
    """The features (n, num_features) of all ``images`` on every process: from the cache, or
    embedded (each process a contiguous share, then gathered) and cached by global rank 0.

    Args:
        embed: the feature stage, on the device to embed on.
        images: the reference images (n, C, H, W) in [-1, 1].
        description: what the images are (stored beside the features, for a person reading the cache).
    """
    device = next(embed.parameters(), torch.empty(0)).device
    path = reference_cache_path(source, images, cache)
    if _everyone_has(path, device):
        return _load(path)
    rank, world = _distributed()
    batches = share_of_this_process(images).split(embed.batch_size)
    bar = with_progress(batches, desc="realism metrics: reference images", disable=not progress or rank != 0)
    parts = [embed(batch.to(device)).cpu() for batch in bar]
    features = torch.cat(parts) if parts else torch.empty(0, embed.num_features)
    if world > 1:
        features = torch.cat([part.cpu() for part in gather_all_tensors(features.to(device))])
    if rank == 0:
        payload = {"features": features, "description": json.dumps(dict(description), default=str)}
        atomic_torch_save(payload, path)
    return features
