"""The FID metric: torchmetrics' FrechetInceptionDistance on images in [-1, 1], with the sample
count in its name and a reference that can be set from cached statistics."""

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_diff.errors import UserError
from lightning_diff.metrics.fid.extractors import to_uint8_rgb
from lightning_diff.metrics.fid.frechet import covariance_root, frechet_distance
from lightning_diff.metrics.fid.weights import SETTINGS_KEY


def metric_name(base: str, count: int) -> str:
    """``fid@1k`` for 1,000 samples, ``fid@1.5k``, ``fid@200``: the name carries the sample count."""
    if count >= 1000 and count % 100 == 0:
        return f"{base}@{count / 1000:g}k"
    return f"{base}@{count}"


@dataclass
class FeatureMoments:
    """Sufficient statistics of a feature set: sum, sum of outer products, count (float64)."""

    total: Tensor
    outer: Tensor
    count: int


class FID(FrechetInceptionDistance):
    """Fréchet distance between generated images and reference (training) images in a feature space.

    Images are (B, C, H, W) in [-1, 1]; they are embedded ``batch_size`` at a time. The
    reference statistics come from ``update(images, real=True)`` (sharded over processes under
    DDP) or from :meth:`set_reference` (a cached copy).

    Args:
        extractor: a module mapping uint8 (B, 3, H, W) to (B, num_features); see :func:`load_extractor`.
        name: the metric's base name (``fid``, or ``fd_<model>`` for other feature networks).
    """

    def __init__(self, extractor: nn.Module, name: str = "fid", batch_size: int = 50, **kwargs: Any) -> None:
        super().__init__(feature=extractor, reset_real_features=False, normalize=False, **kwargs)
        if batch_size < 1:
            raise UserError(f"{SETTINGS_KEY}.batch_size={batch_size} must be >= 1")
        self.base_name = name
        self.batch_size = batch_size
        self._real_root: tuple[tuple[int, float, float], Tensor] | None = None

    def update(self, images: Tensor, real: bool = False) -> None:
        for chunk in to_uint8_rgb(images).split(self.batch_size):
            super().update(chunk.to(self.real_features_sum.device), real=real)

    def compute(self) -> Tensor:
        moments = []
        for side in ("real", "fake"):
            count = int(getattr(self, f"{side}_features_num_samples"))
            if count < 2:
                what = "reference (training)" if side == "real" else "generated"
                raise UserError(f"{self.base_name} needs at least two {what} images, got {count}")
            total, outer = getattr(self, f"{side}_features_sum"), getattr(self, f"{side}_features_cov_sum")
            mean = total / count
            moments.append((mean, (outer - count * torch.outer(mean, mean)) / (count - 1)))
        # The reference stays fixed between measurements: its covariance root is computed once.
        fingerprint = (
            int(self.real_features_num_samples),
            float(self.real_features_sum.sum()),
            float(self.real_features_cov_sum.trace()),
        )
        if self._real_root is None or self._real_root[0] != fingerprint:
            self._real_root = (fingerprint, covariance_root(moments[0][1]))
        return frechet_distance(*moments[0], *moments[1], root1=self._real_root[1])

    def reference(self) -> FeatureMoments:
        """The reference statistics over all processes (a collective under DDP)."""
        with self.sync_context(should_unsync=True):
            return FeatureMoments(
                self.real_features_sum.detach().cpu().clone(),
                self.real_features_cov_sum.detach().cpu().clone(),
                int(self.real_features_num_samples),
            )

    def set_reference(self, moments: FeatureMoments) -> None:
        """Use ``moments`` as the reference. States are summed across processes at sync, so
        under DDP only global rank 0 holds them and the others hold zeros."""
        holder = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        device = self.real_features_sum.device
        if holder:
            self.real_features_sum = moments.total.to(device)
            self.real_features_cov_sum = moments.outer.to(device)
        else:
            self.real_features_sum = torch.zeros_like(self.real_features_sum)
            self.real_features_cov_sum = torch.zeros_like(self.real_features_cov_sum)
        self.real_features_num_samples = torch.tensor(moments.count if holder else 0, device=device)

    def name_for(self, count: int) -> str:
        return metric_name(self.base_name, count)
