"""FID: torchmetrics' FrechetInceptionDistance on features already embedded (by
:class:`~lightning_diff.metrics.fid.ImageFeatures`), with the sample count in its name."""

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_diff.errors import UserError
from lightning_diff.metrics.fid.frechet import covariance_root, frechet_distance


def metric_name(base: str, count: int) -> str:
    """``fid@1k`` for 1,000 samples, ``fid@1.5k``, ``fid@200``: the name carries the sample count."""
    if count >= 1000 and count % 100 == 0:
        return f"{base}@{count / 1000:g}k"
    return f"{base}@{count}"


class GivenFeatures(nn.Module):
    """The ``feature=`` module of a torchmetrics metric fed features instead of images: identity."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise UserError(
                f"expected features (B, {self.num_features}), got shape {tuple(features.shape)}; "
                "embed images with ImageFeatures first"
            )
        return features


class FID(FrechetInceptionDistance):
    """Fréchet distance between the features of generated images and of reference images.

    ``update(features)`` adds generated images' features, ``update(features, real=True)`` (or
    :meth:`set_reference`) reference ones; under DDP each process adds its own share and the sums
    are reduced. The reference is kept across :meth:`reset`.

    Args:
        num_features: the feature dimension.
        name: the metric's base name (``fid``, or ``fd_<model>`` for other feature networks).
    """

    def __init__(self, num_features: int, name: str = "fid", **kwargs: Any) -> None:
        super().__init__(feature=GivenFeatures(num_features), reset_real_features=False, normalize=False, **kwargs)
        self.base_name = name
        self._real_root: tuple[tuple[int, float, float], Tensor] | None = None

    def update(self, features: Tensor, real: bool = False) -> None:
        super().update(features.to(self.real_features_sum.device), real=real)

    def set_reference(self, features: Tensor) -> None:
        """Make ``features`` (this process's share under DDP) the reference."""
        for state in (self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples):
            state.zero_()
        self.update(features, real=True)

    def compute(self) -> Tensor:
        moments = []
        for side in ("real", "fake"):
            count = int(getattr(self, f"{side}_features_num_samples"))
            if count < 2:
                what = "reference" if side == "real" else "generated"
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

    def name_for(self, count: int) -> str:
        return metric_name(self.base_name, count)
