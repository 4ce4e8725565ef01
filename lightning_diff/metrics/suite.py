"""The configured measurement of one dataset, shared by the measuring callback and
``python -m lightning_diff.evaluate``: every declared metric (:mod:`lightning_diff.metrics.declared`)
that has an enabled entry under ``metrics`` and applies to the data.

The settings are the top-level ``metrics`` config node (plain dict): one entry per metric, plus
``features`` (the feature network FID, KID and PRDC share) and ``reference`` (the real images
they compare with, :mod:`lightning_diff.metrics.held_out`). Each image is embedded once and its
features go to every metric that needs them.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_diff.errors import UserError
from lightning_diff.metrics.declared import SETTINGS_KEY, Batch, DeclaredMetric, MetricContext, declared
from lightning_diff.metrics.fid import (
    FeatureSource,
    ImageFeatures,
    WeightsNotFound,
    feature_settings,
    load_extractor,
    reference_features,
    resolve_weights,
    share_of_this_process,
)
from lightning_diff.metrics.held_out import DataSplits, Reference, choose_reference, reference_settings
from lightning_diff.metrics.memorization import NearestNeighbours

# Entries under `metrics` that configure the measurement rather than name a metric.
GROUPS = ("features", "reference")


@dataclass(frozen=True)
class MeasurementPlan:
    """What a measurement computes, decided once (plain data: it crosses to DDP processes).

    Attributes:
        metrics: the metrics measured, by name, with their checked settings.
        features: the checked ``metrics.features`` settings.
        source: the verified feature network (None: no metric that needs one is measured).
        reference: the reference images of the metrics that need features.
        notes: what to tell the user once (weights not found, no held-out images).
    """

    metrics: dict[str, dict[str, Any]]
    features: dict[str, Any]
    source: FeatureSource | None = None
    reference: Reference | None = None
    notes: tuple[str, ...] = ()


def checked_metrics(settings: Mapping[str, Any], is_image: bool) -> dict[str, dict[str, Any]]:
    """The enabled metrics that apply to the data, with their checked settings."""
    known = declared()
    unknown = [str(key) for key in settings if key not in known and key not in GROUPS]
    if unknown:
        raise UserError(
            f"{', '.join(f'{SETTINGS_KEY}.{key}' for key in unknown)}: no metric of that name; the declared metrics "
            f"are {', '.join(known)} (and {', '.join(f'{SETTINGS_KEY}.{group}' for group in GROUPS)} configure them)"
        )
    chosen = {}
    for name, metric in known.items():
        if name in settings:
            checked, enabled = metric.checked(settings[name])
            if enabled and metric.applies(is_image):
                chosen[name] = checked
    return chosen


def plan_measurement(
    settings: Mapping[str, Any], data: DataSplits, is_image: bool, cache: Path | None = None
) -> MeasurementPlan:
    """Check ``settings`` (the ``metrics`` node) and decide what ``data`` is measured with.

    A configured weights file that is missing or wrong is a :class:`UserError` (the run stops
    before training); weights found nowhere leave out the metrics that need them, with a note.
    """
    settings = dict(settings or {})
    chosen = checked_metrics(settings, is_image)
    features = feature_settings(settings.get("features"))
    reference_settings(settings.get("reference"))
    known = declared()
    if not any(known[name].needs_features for name in chosen):
        return MeasurementPlan(chosen, features)
    try:
        source = resolve_weights(features, cache)
    except WeightsNotFound as missing:
        without = {name: values for name, values in chosen.items() if not known[name].needs_features}
        return MeasurementPlan(without, features, notes=(str(missing),))
    reference = choose_reference(data, settings.get("reference"))
    note = reference.note()
    return MeasurementPlan(chosen, features, source, reference, (note,) if note else ())


class MetricSuite:
    """Feeds generated samples to every planned metric and reports them as one flat dict.

    Args:
        plan: what to measure (:func:`plan_measurement`).
        train: the training set (N, *data_shape).
        num_samples: the total number of samples measured (named in ``fid@<n>``).
        cache: where the reference features are cached (None: the project cache).
    """

    def __init__(self, plan: MeasurementPlan, train: Tensor, num_samples: int, cache: Path | None = None) -> None:
        self.plan = plan
        self.train = train
        self.cache = cache
        self.embed: ImageFeatures | None = None
        if plan.source is not None:
            self.embed = ImageFeatures(load_extractor(plan.source), batch_size=plan.features["batch_size"])
        reference = plan.reference
        self.context = MetricContext(
            train=train,
            num_samples=num_samples,
            source=plan.source,
            num_features=0 if self.embed is None else self.embed.num_features,
            reference_marker="" if reference is None else reference.marker,
            reference_count=0 if reference is None else reference.images.shape[0],
        )
        known = declared()
        self.declared: dict[str, DeclaredMetric] = {name: known[name] for name in plan.metrics}
        self.metrics: dict[str, Metric] = {
            name: metric.build(self.context, plan.metrics[name]) for name, metric in self.declared.items()
        }
        self._reference_ready = False

    def to(self, device: torch.device | str) -> "MetricSuite":
        for metric in self.metrics.values():
            metric.to(device)
        if self.embed is not None:
            self.embed.to(device)
        return self

    def prepare(self, progress: bool = True) -> None:
        """Give the metrics that need features the reference features (once; a collective under DDP)."""
        if self.embed is None or self._reference_ready:
            return
        assert self.plan.reference is not None and self.plan.source is not None
        reference = self.plan.reference
        features = reference_features(
            self.embed, reference.images, self.plan.source, reference.description, self.cache, progress=progress
        )
        share = share_of_this_process(features)
        for name, metric in self.metrics.items():
            if self.declared[name].needs_features:
                metric.set_reference(share.to(metric.device))
        self._reference_ready = True

    def reset(self) -> None:
        for metric in self.metrics.values():
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
        self.prepare()
        batch = Batch(samples, index, None if self.embed is None else self.embed(samples))
        for name, metric in self.metrics.items():
            metric.update(*(getattr(batch, field) for field in self.declared[name].inputs))

    def compute(self) -> dict[str, float]:
        """Every metric's values (a collective under DDP): ``memorized_fraction``, ``d1_median``,
        ``fid@<n>``, ``kid@<n>``, ``precision@<n>``, ``mean_error``, ..."""
        values: dict[str, float] = {}
        for name, metric in self.metrics.items():
            values.update(self.declared[name].results(metric, self.context))
        return values

    def neighbours(self) -> NearestNeighbours | None:
        """Per-sample nearest training images (a collective under DDP), or None without memorization."""
        memorization = self.metrics.get("memorization")
        return None if memorization is None else memorization.per_sample()
