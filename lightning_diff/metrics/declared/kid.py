"""KID: torchmetrics' KernelInceptionDistance on the shared features, named ``kid@<n>`` and
``kid_std@<n>`` for n samples (``kd_<model>`` in another feature space, ``_train`` against
training images).

KID is the unbiased estimate of the squared MMD between generated and reference features with
the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Bińkowski et al. 2018), averaged over
``subsets`` random subsets of ``subset_size`` of each; ``kid_std`` is its spread over the
subsets. ``subset_size`` is clamped to the number of samples and of reference images (a subset
cannot be larger than the set it is drawn from), so a short measurement during training works
with the same settings as a study's 256 or more; the estimate stays unbiased, only noisier.
"""

import warnings
from typing import Any

import torch
from torch import Tensor
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from lightning_diff.errors import UserError
from lightning_diff.metrics.declared import DeclaredMetric, MetricContext, declare
from lightning_diff.metrics.fid import GivenFeatures, metric_name

SETTINGS_KEY = "metrics.kid"


class KID(KernelInceptionDistance):
    """KID of features (B, num_features): ``update(features)`` for generated images,
    :meth:`set_reference` for the reference (kept across :meth:`reset`). The subsets are drawn
    from a generator seeded by ``seed``, so a measurement repeats exactly.

    Args:
        num_features: the feature dimension.
        subsets: how many random subsets the estimate averages.
        subset_size: the size of each subset (of the samples and of the reference alike).
        seed: seeds the subsets.
    """

    def __init__(self, num_features: int, subsets: int = 100, subset_size: int = 1000, seed: int = 0, **kwargs: Any):
        if not isinstance(subsets, int) or subsets < 1 or not isinstance(subset_size, int) or subset_size < 2:
            raise UserError(
                f"{SETTINGS_KEY}.subsets={subsets!r} must be an integer >= 1 and {SETTINGS_KEY}.subset_size="
                f"{subset_size!r} an integer >= 2"
            )
        with warnings.catch_warnings():
            # Keeping every feature is how KID works; torchmetrics warns of it at each construction.
            warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
            super().__init__(
                feature=GivenFeatures(num_features), subsets=subsets, subset_size=subset_size,
                reset_real_features=False, **kwargs,
            )
        # torchmetrics gathers these lists element by element under DDP, which needs as many updates on
        # every process and interleaves them; concatenated first, they gather in rank order, as one process.
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")
        self.seed = seed

    def update(self, features: Tensor, real: bool = False) -> None:
        super().update(features, real=real)

    def set_reference(self, features: Tensor) -> None:
        """Make ``features`` (this process's share under DDP) the reference."""
        self.real_features = []
        self.update(features, real=True)

    def compute(self) -> tuple[Tensor, Tensor]:
        """The mean and the standard deviation of the unbiased MMD^2 over the subsets."""
        counts = [dim_zero_cat(side).shape[0] if len(side) else 0 for side in (self.real_features, self.fake_features)]
        if min(counts) < self.subset_size:
            raise UserError(
                f"KID subsets of {self.subset_size} need at least as many reference and generated images, got "
                f"{counts[0]} and {counts[1]}; draw more samples or lower {SETTINGS_KEY}.subset_size"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return super().compute()


def build(context: MetricContext, settings: dict[str, Any]) -> KID:
    if min(context.num_samples, context.reference_count) < 2:
        raise UserError(
            f"KID needs at least two samples and two reference images, got {context.num_samples} and "
            f"{context.reference_count}; measure more samples, or set {SETTINGS_KEY}.enabled=false"
        )
    metric = KID(context.num_features, settings["subsets"], settings["subset_size"], settings["seed"])
    metric.subset_size = min(metric.subset_size, context.num_samples, context.reference_count)
    return metric


def results(metric: KID, context: MetricContext) -> dict[str, float]:
    mean, std = metric.compute()
    base, marker = context.space("kid", "kd"), context.reference_marker
    return {
        metric_name(base + marker, context.num_samples): float(mean),
        metric_name(f"{base}_std{marker}", context.num_samples): float(std),
    }


KID_METRIC = declare(
    DeclaredMetric(
        name="kid",
        applies_to="images",
        settings={"subsets": 100, "subset_size": 1000, "seed": 0},
        build=build,
        needs_features=True,
        inputs=("features",),
        results=results,
        report_columns=("kid*@*", "kd_*@*"),
    )
)
