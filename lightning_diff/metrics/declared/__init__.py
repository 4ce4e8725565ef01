"""Metrics declare themselves, and the measurement and the report loop over the declarations.

A metric is one module in this package that calls :func:`declare` with a :class:`DeclaredMetric`
(its config name, the data it applies to, its settings, how to build it, what it is fed, how its
results are named, and which of them the report shows), plus one entry ``metrics.<name>`` in
``conf/metrics/default.yaml`` with the same settings and ``enabled``. The modules of this
package are imported on the first look-up, so a new module needs no other registration. A
declared metric without an entry under ``metrics`` is not measured.
"""

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torchmetrics import Metric

from lightning_diff.errors import UserError
from lightning_diff.metrics.fid import FeatureSource
from lightning_diff.run.checks import check_type

SETTINGS_KEY = "metrics"
APPLIES_TO = ("images", "non_images", "all")
INPUTS = ("samples", "index", "features")
# Every metric's entry also takes these, handled by the measurement rather than the metric.
COMMON_SETTINGS: dict[str, Any] = {"enabled": True}


@dataclass(frozen=True)
class Batch:
    """One batch of generated samples, as the metrics are fed it."""

    samples: Tensor  # (B, *data_shape)
    index: Tensor | None  # (B,) global sample numbers
    features: Tensor | None  # (B, num_features) from the shared feature network, for images


@dataclass(frozen=True)
class MetricContext:
    """What a metric is built from.

    Attributes:
        train: the training set (N, *data_shape).
        num_samples: the number of samples measured (named in ``fid@<n>``).
        source: the feature network (None unless a metric that needs features is measured).
        num_features: its feature dimension (0 without one).
        reference_marker: ``""`` against held-out images, ``"_train"`` against training images.
        reference_count: the number of reference images (0 without a feature network).
    """

    train: Tensor
    num_samples: int
    source: FeatureSource | None = None
    num_features: int = 0
    reference_marker: str = ""
    reference_count: int = 0

    def space(self, inception: str, other: str) -> str:
        """A metric's base name in this feature space: ``inception`` for Inception features, else
        ``other`` followed by ``_<model>`` (``kid`` / ``kd_<model>``)."""
        assert self.source is not None, "only metrics that need features are named by their feature space"
        return inception if self.source.inception else f"{other}_{self.source.model}"


def plain_results(metric: Metric, context: MetricContext) -> dict[str, float]:
    """The results of a metric whose ``compute()`` returns a dict of named values."""
    return {key: float(value) for key, value in metric.compute().items()}


@dataclass(frozen=True)
class DeclaredMetric:
    """What a metric tells the measurement and the report about itself.

    Attributes:
        name: its key under ``metrics`` in the config.
        applies_to: ``images``, ``non_images`` or ``all``; elsewhere it is not measured.
        settings: every setting with its default (the YAML entry has the same ones, plus ``enabled``).
        build: makes the torchmetrics ``Metric`` from the context and the checked settings.
        report_columns: patterns (``fnmatch``) of its result keys that the report shows.
        needs_features: embeds with the shared feature network (``metrics.features``) and is
            compared with the reference images: it has ``set_reference(features)``.
        inputs: the :class:`Batch` fields given to ``update``, in order.
        results: its computed values by name (a collective under DDP).
    """

    name: str
    applies_to: str
    settings: Mapping[str, Any]
    build: Callable[[MetricContext, dict[str, Any]], Metric]
    report_columns: tuple[str, ...] = ()
    needs_features: bool = False
    inputs: tuple[str, ...] = ("samples",)
    results: Callable[[Metric, MetricContext], dict[str, float]] = field(default=plain_results)

    def __post_init__(self) -> None:
        if self.applies_to not in APPLIES_TO or not set(self.inputs) <= set(INPUTS):
            raise ValueError(f"metric {self.name}: applies_to in {APPLIES_TO} and inputs among {INPUTS}")
        if ("features" in self.inputs) != self.needs_features:
            raise ValueError(f"metric {self.name}: it is fed features exactly when it needs features")

    def applies(self, is_image: bool) -> bool:
        return self.applies_to == "all" or (self.applies_to == "images") == is_image

    def checked(self, given: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
        """Its settings (defaults filled in) and whether it is enabled; an unknown key is a :class:`UserError`."""
        given = dict(given or {})
        valid = [*COMMON_SETTINGS, *self.settings]
        unknown = [key for key in given if key not in valid]
        if unknown:
            raise UserError(
                f"{', '.join(f'{SETTINGS_KEY}.{self.name}.{key}' for key in unknown)}: not a setting of the "
                f"{self.name} metric; valid settings: {', '.join(valid)}"
            )
        for key, value in given.items():
            default = {**COMMON_SETTINGS, **self.settings}[key]
            if default is not None:  # a setting whose default is null takes values of its own kind
                check_type(f"{SETTINGS_KEY}.{self.name}.{key}", value, type(default))
        enabled = given.pop("enabled", COMMON_SETTINGS["enabled"])
        return {**self.settings, **given}, bool(enabled)


_DECLARED: dict[str, DeclaredMetric] = {}


def declare(metric: DeclaredMetric) -> DeclaredMetric:
    """Register ``metric`` under its name."""
    if metric.name in _DECLARED and _DECLARED[metric.name] is not metric:
        raise RuntimeError(f"two metrics are declared as {metric.name!r}")
    _DECLARED[metric.name] = metric
    return metric


def declared() -> dict[str, DeclaredMetric]:
    """Every declared metric, by name."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_DECLARED.items()))


def measured_columns(runs: Iterable[Any], shown: Iterable[str] = ()) -> list[str]:
    """The report columns that ``runs`` (each with a ``measure`` dict) measured, metric by metric in
    name order and in each metric's own column order, leaving out the columns already ``shown``."""
    keys = {key for run in runs for key in run.measure} - set(shown)
    columns: list[str] = []
    for metric in declared().values():
        for pattern in metric.report_columns:
            columns += sorted(key for key in keys if fnmatch.fnmatchcase(key, pattern) and key not in columns)
    return columns
