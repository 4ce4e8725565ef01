"""Precision, recall, density and coverage of generated features against reference features,
named ``precision@<n>``, ``recall@<n>``, ``density@<n>``, ``coverage@<n>`` for n samples
(``precision_<model>@<n>`` in another feature space, ``precision_train@<n>`` against training images).

Each point gets a ball reaching its k-th nearest neighbour in its own set (Euclidean, k =
``nearest_k``; Naeem et al. 2020 recommend k = 5):

- precision (Kynkäänniemi et al. 2019): the share of samples inside some reference ball;
- recall: the share of reference images inside some sample ball;
- density (Naeem et al. 2020): the mean number of reference balls a sample is in, over k;
  1 when samples are distributed like the reference, above 1 where they crowd its dense parts;
- coverage: the share of reference images whose ball holds a sample.

The same numbers as the ``prdc`` package's ``compute_prdc`` (tests/test_realism.py checks them).
"""

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_diff.errors import UserError
from lightning_diff.metrics.declared import DeclaredMetric, MetricContext, declare
from lightning_diff.metrics.fid import metric_name

SETTINGS_KEY = "metrics.prdc"
MEASURES = ("precision", "recall", "density", "coverage")
# Rows of a distance matrix held at once: bounds memory at ROWS x n distances.
ROWS = 1024


def kth_neighbour_distance(points: Tensor, k: int) -> Tensor:
    """For each row of ``points`` (n, d), the distance to its k-th nearest other row."""
    radii = [torch.cdist(rows, points).kthvalue(k + 1, dim=1).values for rows in points.split(ROWS)]
    return torch.cat(radii)  # k + 1: each row's nearest is itself, at distance 0


class PRDC(Metric):
    """Precision, recall, density and coverage of features (B, num_features).

    ``update(features)`` adds generated images' features, :meth:`set_reference` the reference
    (kept across :meth:`reset`). Features are list states concatenated across processes.

    Args:
        nearest_k: the neighbour whose distance is a point's ball radius.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, nearest_k: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(nearest_k, int) or nearest_k < 1:
            raise UserError(f"{SETTINGS_KEY}.nearest_k={nearest_k!r} must be an integer >= 1 (Naeem et al. use 5)")
        self.nearest_k = nearest_k
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")
        self._real_radii: tuple[tuple[int, float], Tensor] | None = None

    def update(self, features: Tensor, real: bool = False) -> None:
        (self.real_features if real else self.fake_features).append(features.detach())

    def set_reference(self, features: Tensor) -> None:
        """Make ``features`` (this process's share under DDP) the reference."""
        self.real_features = [features.detach()]

    def reset(self) -> None:
        reference = list(self.real_features)  # torchmetrics empties list states in place
        super().reset()
        self.real_features = reference

    def compute(self) -> dict[str, Tensor]:
        real, fake = (
            dim_zero_cat(side).double() if len(side) else torch.empty(0)
            for side in (self.real_features, self.fake_features)
        )
        k = self.nearest_k
        if min(real.shape[0], fake.shape[0]) <= k:
            raise UserError(
                f"precision / recall with {SETTINGS_KEY}.nearest_k={k} need more than {k} reference and generated "
                f"images, got {real.shape[0]} and {fake.shape[0]}; draw more samples or lower {SETTINGS_KEY}.nearest_k"
            )
        # The reference stays fixed between measurements: its radii are computed once.
        fingerprint = (real.shape[0], float(real.sum()))
        if self._real_radii is None or self._real_radii[0] != fingerprint:
            self._real_radii = (fingerprint, kth_neighbour_distance(real, k))
        real_radii, fake_radii = self._real_radii[1], kth_neighbour_distance(fake, k)
        distance = torch.cdist(real, fake)  # (reference, samples)
        inside_real = distance < real_radii[:, None]
        return {
            "precision": inside_real.any(dim=0).double().mean(),
            "recall": (distance < fake_radii[None, :]).any(dim=1).double().mean(),
            "density": inside_real.sum(dim=0).double().mean() / k,
            "coverage": (distance.min(dim=1).values < real_radii).double().mean(),
        }


def build(context: MetricContext, settings: dict[str, Any]) -> PRDC:
    return PRDC(nearest_k=settings["nearest_k"])


def results(metric: PRDC, context: MetricContext) -> dict[str, float]:
    values = metric.compute()
    names = {measure: context.space(measure, measure) + context.reference_marker for measure in MEASURES}
    return {metric_name(names[measure], context.num_samples): float(values[measure]) for measure in MEASURES}


PRDC_METRIC = declare(
    DeclaredMetric(
        name="prdc",
        applies_to="images",
        settings={"nearest_k": 5},
        build=build,
        needs_features=True,
        inputs=("features",),
        results=results,
        report_columns=tuple(f"{measure}*@*" for measure in MEASURES),
    )
)
