"""Distribution distances, declared: generated samples against the training set, for synthetic
(non-image) data (:class:`~lightning_diff.metrics.distribution.DistributionDistance`)."""

from typing import Any

from lightning_diff.metrics.declared import DeclaredMetric, MetricContext, declare
from lightning_diff.metrics.distribution import DistributionDistance


def build(context: MetricContext, settings: dict[str, Any]) -> DistributionDistance:
    return DistributionDistance(context.train, **settings)


DISTRIBUTION = declare(
    DeclaredMetric(
        name="distribution",
        applies_to="non_images",
        settings={"num_projections": 128, "bandwidth": None, "max_reference": 2048, "seed": 0},
        build=build,
        # Synthetic runs are read against their family's theory (run.json), not in the report's table.
        report_columns=(),
    )
)
