"""Memorization, declared: the nearest training images of every sample, on all data
(:class:`~lightning_diff.metrics.memorization.Memorization`)."""

from typing import Any

from lightning_diff.metrics.declared import DeclaredMetric, MetricContext, declare
from lightning_diff.metrics.memorization import Memorization
from lightning_diff.metrics.nearest import COPY_RATIO


def build(context: MetricContext, settings: dict[str, Any]) -> Memorization:
    return Memorization(context.train, ratio=float(settings["ratio"]))


MEMORIZATION = declare(
    DeclaredMetric(
        name="memorization",
        applies_to="all",
        settings={"ratio": COPY_RATIO},  # memorized iff d1 / d2 < ratio
        build=build,
        inputs=("samples", "index"),
        report_columns=("memorized_fraction", "d1_median"),
    )
)
