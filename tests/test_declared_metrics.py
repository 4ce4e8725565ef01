"""Issue 22 (5): a metric declares itself. The registry matches conf/metrics/, a metric declared in
a test is measured and reported from its declaration alone, settings are checked, and ``metrics``
is a top-level config node that ``evaluate`` reads without ``callbacks``."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from test_metrics import Splits
from torchmetrics import Metric

from lightning_diff.errors import UserError
from lightning_diff.evaluate import evaluate
from lightning_diff.metrics import declared as registry
from lightning_diff.metrics.declared import DeclaredMetric, MetricContext, declare, declared, measured_columns
from lightning_diff.metrics.suite import GROUPS, MetricSuite, plan_measurement
from lightning_diff.run.cli import CONF_DIR, compose_or_explain

METRICS_YAML = Path(CONF_DIR) / "metrics" / "default.yaml"
DIGITS = ["data=digits", "data.num_train=60", "data.num_val=20"]


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


class ScaledMean(Metric):
    """The mean of every sample's entries, times a scale: a metric a test declares."""

    full_state_update = False

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: torch.Tensor) -> None:
        self.total += samples.double().sum()
        self.count += samples.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        return {"scaled_mean": self.scale * self.total / self.count}


@pytest.fixture
def scaled_mean(monkeypatch: pytest.MonkeyPatch) -> DeclaredMetric:
    """``scaled_mean`` declared for the test only (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_DECLARED", dict(declared()))

    def build(context: MetricContext, settings: dict[str, Any]) -> ScaledMean:
        return ScaledMean(settings["scale"])

    return declare(
        DeclaredMetric(
            name="scaled_mean", applies_to="all", settings={"scale": 1.0}, build=build, report_columns=("scaled_mean",)
        )
    )


def test_every_declared_metric_is_one_entry_of_conf_metrics_with_the_same_settings() -> None:
    entries = yaml.safe_load(METRICS_YAML.read_text())
    metrics = declared()
    assert set(entries) == set(metrics) | set(GROUPS)
    for name, metric in metrics.items():
        assert entries[name] == {"enabled": True, **metric.settings}, name


def test_a_metric_declared_alone_is_measured_and_reported(scaled_mean: DeclaredMetric, tmp_path: Path) -> None:
    samples = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    splits = Splits(torch.randn(20, 3), torch.randn(5, 3))
    plan = plan_measurement({"scaled_mean": {"scale": 2.0}}, splits, is_image=False)
    assert plan.metrics == {"scaled_mean": {"scale": 2.0}}
    suite = MetricSuite(plan, splits.train_data, num_samples=10)
    suite.update(samples[:4])
    suite.update(samples[4:])
    assert suite.compute() == {"scaled_mean": pytest.approx(2.0 * float(samples.double().mean()))}
    assert plan_measurement({"scaled_mean": {"enabled": False}}, splits, is_image=False).metrics == {}
    # Through the entry point: an entry added on the command line is all it takes.
    path = tmp_path / "samples.npz"
    np.savez(path, samples=np.zeros((4, 1, 8, 8), dtype=np.float32) + 0.5)
    cfg = compose_config("evaluate", *DIGITS, f"samples={path}", "+metrics.scaled_mean.scale=3", "progress=false")
    assert evaluate(cfg)["scaled_mean"] == pytest.approx(1.5)
    runs = [SimpleNamespace(measure={"scaled_mean": 1.5, "memorized_fraction": 0.0, "unrelated": 1.0})]
    assert measured_columns(runs) == ["memorized_fraction", "scaled_mean"]


def test_report_columns_come_from_the_declarations_in_their_order() -> None:
    runs = [
        SimpleNamespace(measure={"memorized_fraction": 0.1, "d1_median": 0.2, "fid@256": 30.0, "kid_std@256": 0.001}),
        SimpleNamespace(measure={"kid@256": 0.01, "recall@256": 0.5, "precision@256": 0.6, "fd_dino@256": 1.0}),
        SimpleNamespace(measure={"fid_train@256": 5.0, "mean_error": 0.3}),
    ]
    assert measured_columns(runs, shown=("memorized_fraction", "d1_median")) == [
        "fid@256", "fid_train@256", "fd_dino@256", "kid@256", "kid_std@256", "precision@256", "recall@256",
    ]


def test_bad_metric_settings_get_one_message_naming_the_valid_ones() -> None:
    splits = Splits(torch.randn(20, 3), torch.randn(5, 3))
    cases = [
        ({"inception_score": {}}, "metrics.inception_score: no metric of that name; the declared metrics are dis"),
        ({"kid": {"subset_sizes": 10}}, "metrics.kid.subset_sizes: not a setting of the kid metric; valid"),
        ({"features": {"weight": "x.pt"}}, "metrics.features.weight: not a setting of the feature network"),
        ({"reference": {"count": 1}}, "metrics.reference.count=1 must be an integer >= 2"),
        ({"reference": {"cout": 5}}, "metrics.reference.cout: not a setting; valid: count, seed"),
    ]
    for settings, message in cases:
        with pytest.raises(UserError) as caught:
            plan_measurement(settings, splits, is_image=False)
        assert str(caught.value).startswith(message), str(caught.value)
    with pytest.raises(UserError, match="declared metrics are distribution, fid, kid, memorization, prdc"):
        plan_measurement({"inception_score": {}}, splits, is_image=False)
    with pytest.raises(UserError, match="valid settings: enabled, subsets, subset_size, seed$"):
        plan_measurement({"kid": {"subset_sizes": 10}}, splits, is_image=False)
    with pytest.raises(UserError, match="did you mean metrics.kid.subset_size"):
        compose_or_explain("train", ["metrics.kid.subset_sze=3"])


def test_metrics_is_a_top_level_node_that_evaluate_reads_without_callbacks(tmp_path: Path) -> None:
    train_cfg = compose_config("train")
    assert set(train_cfg.callbacks.measure) == {"_target_", "enabled", "every_n_steps", "num_samples", "batch_size",
                                                "grid_size"}
    assert train_cfg.metrics.features.weights is None and train_cfg.metrics.kid.subset_size == 1000
    path = tmp_path / "samples.npz"
    np.savez(path, samples=np.zeros((4, 1, 8, 8), dtype=np.float32))
    cfg = compose_config("evaluate", *DIGITS, f"samples={path}", "progress=false")
    assert "callbacks" not in cfg
    assert "memorized_fraction" in evaluate(cfg)
    cfg = compose_config("evaluate", *DIGITS, f"samples={path}", "metrics.memorization.enabled=false", "progress=false")
    assert not any(key.startswith(("memorized", "d1_")) for key in evaluate(cfg))
