"""The configured set of measurements for one dataset, shared by the measuring callback and
``python -m lightning_diff.evaluate``.

Which metric applies to which data: ``memorization`` to all data; ``fid`` to images, when its
feature-network weights are found; ``distribution`` to non-image (synthetic) data. The settings
are the ``callbacks.measure`` config node (plain dict).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_diff.errors import UserError
from lightning_diff.metrics.distribution import DistributionDistance
from lightning_diff.metrics.fid import (
    FID,
    FeatureSource,
    load_extractor,
    prepare_reference,
    reference_images,
    resolve_weights,
)
from lightning_diff.metrics.memorization import Memorization, NearestNeighbours
from lightning_diff.metrics.nearest import COPY_RATIO

METRICS = ("memorization", "fid", "distribution")
DISTRIBUTION_OPTIONS = ("num_projections", "bandwidth", "max_reference", "seed")


def metric_names(settings: Mapping[str, Any]) -> list[str]:
    """The configured metric names, checked."""
    names = list(settings.get("metrics") or [])
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise UserError(
            f"callbacks.measure.metrics: {', '.join(map(str, unknown))} unknown; choose from {', '.join(METRICS)}"
        )
    return names


def fid_source(settings: Mapping[str, Any], is_image: bool, cache: Path | None = None) -> FeatureSource | None:
    """The verified FID weights when FID is configured and applies (images), else None.

    Raises :class:`~lightning_diff.metrics.fid.WeightsNotFound` when none are found (the
    caller warns once and measures without FID) and :class:`UserError` for a bad file.
    """
    if "fid" not in metric_names(settings) or not is_image:
        return None
    return resolve_weights(settings.get("fid") or {}, cache)


class MetricSuite:
    """Feeds generated samples to every applicable metric and reports them as one flat dict.

    Args:
        settings: the ``callbacks.measure`` node.
        train: the training set (N, *data_shape).
        is_image: whether the data are images in [-1, 1].
        data_config: the data config (part of the FID reference cache key).
        source: the FID weights from :func:`fid_source` (None: no FID).
        num_samples: the total number of samples measured (named in ``fid@<n>``).
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        train: Tensor,
        is_image: bool,
        data_config: Mapping[str, Any],
        source: FeatureSource | None,
        num_samples: int,
        cache: Path | None = None,
    ) -> None:
        names = metric_names(settings)
        self.train = train
        self.data_config = dict(data_config)
        self.num_samples = num_samples
        self.cache = cache
        self.source = source
        self.memorization = None
        if "memorization" in names:
            ratio = float((settings.get("memorization") or {}).get("ratio", COPY_RATIO))
            self.memorization = Memorization(train, ratio=ratio)
        self.fid = None
        self.fid_settings = dict(settings.get("fid") or {})
        if source is not None and is_image and "fid" in names:
            batch_size = int(self.fid_settings.get("batch_size", 50))
            self.fid = FID(load_extractor(source), name=source.name, batch_size=batch_size)
        self.distribution = None
        if "distribution" in names and not is_image:
            options = dict(settings.get("distribution") or {})
            unknown = sorted(set(options) - set(DISTRIBUTION_OPTIONS))
            if unknown:
                raise UserError(
                    f"callbacks.measure.distribution: {', '.join(unknown)} unknown; "
                    f"valid settings: {', '.join(DISTRIBUTION_OPTIONS)}"
                )
            self.distribution = DistributionDistance(train, **options)
        self._reference_ready = False

    def metrics(self) -> list[Any]:
        return [m for m in (self.memorization, self.fid, self.distribution) if m is not None]

    def to(self, device: torch.device | str) -> "MetricSuite":
        for metric in self.metrics():
            metric.to(device)
        return self

    def prepare(self, progress: bool = True) -> None:
        """Load or compute the FID reference statistics (once; a collective under DDP)."""
        if self.fid is None or self._reference_ready:
            return
        images = reference_images(self.train, self.fid_settings.get("reference_count"))
        assert self.source is not None
        prepare_reference(self.fid, images, self.source, self.data_config, self.cache, progress=progress)
        self._reference_ready = True

    def reset(self) -> None:
        for metric in self.metrics():
            metric.reset()

    @torch.no_grad()
    def update(self, samples: Tensor, index: Tensor | None = None) -> None:
        """Add generated samples (B, *data_shape) with their global sample numbers."""
        if samples.shape[0] == 0:
            raise UserError("there are no samples to measure (the sample set is empty)")
        if tuple(samples.shape[1:]) != tuple(self.train.shape[1:]):
            raise UserError(
                f"samples of shape {tuple(samples.shape[1:])} cannot be measured against training data of shape "
                f"{tuple(self.train.shape[1:])}; sample from a model trained on this data, or pick its data config"
            )
        if self.memorization is not None:
            self.memorization.update(samples, index)
        if self.fid is not None:
            self.prepare()
            self.fid.update(samples)
        if self.distribution is not None:
            self.distribution.update(samples)

    def compute(self) -> dict[str, float]:
        """Every metric's values (a collective under DDP): ``memorized_fraction``, ``d1_median``,
        ``fid@<n>``, ``mean_error``, ..."""
        values: dict[str, float] = {}
        if self.memorization is not None:
            values.update({key: float(value) for key, value in self.memorization.compute().items()})
        if self.fid is not None:
            values[self.fid.name_for(self.num_samples)] = float(self.fid.compute())
        if self.distribution is not None:
            values.update({key: float(value) for key, value in self.distribution.compute().items()})
        return values

    def neighbours(self) -> NearestNeighbours | None:
        """Per-sample nearest training images (a collective under DDP), or None without memorization."""
        return None if self.memorization is None else self.memorization.per_sample()
