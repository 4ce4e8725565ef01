"""FID, declared: the Fréchet distance of the samples' features from the reference images'
(:class:`~lightning_diff.metrics.fid.FID`), named ``fid@<n>`` for n samples (``fd_<model>@<n>``
in another feature space, ``fid_train@<n>`` against training images)."""

from typing import Any

from lightning_diff.metrics.declared import DeclaredMetric, MetricContext, declare
from lightning_diff.metrics.fid import FID, metric_name


def build(context: MetricContext, settings: dict[str, Any]) -> FID:
    assert context.source is not None
    return FID(context.num_features, name=context.source.name + context.reference_marker)


def results(metric: FID, context: MetricContext) -> dict[str, float]:
    return {metric_name(metric.base_name, context.num_samples): float(metric.compute())}


FID_METRIC = declare(
    DeclaredMetric(
        name="fid",
        applies_to="images",
        settings={},
        build=build,
        needs_features=True,
        inputs=("features",),
        results=results,
        report_columns=("fid*@*", "fd_*@*"),
    )
)
