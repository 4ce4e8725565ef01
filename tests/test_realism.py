"""Issue 22 (4): realism from enough samples against held-out images. KID and PRDC on the shared
features against direct computations and the ``prdc`` package; the held-out reference (the test
split, or training images named as such); the data's own row from ``evaluate training_images=N``."""

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import prdc
import pytest
import torch
from test_metrics import Splits, tiny_timm_settings

from conftest import run_module
from lightning_diff.data.images import DigitsDataModule, FashionMNISTDataModule
from lightning_diff.errors import UserError
from lightning_diff.metrics.declared.kid import KID
from lightning_diff.metrics.declared.prdc import PRDC
from lightning_diff.metrics.fid import load_extractor, resolve_weights, to_uint8_rgb
from lightning_diff.metrics.held_out import choose_reference
from lightning_diff.metrics.suite import MetricSuite, plan_measurement


def direct_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3 over all of two equal-sized sets, in numpy."""
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3
    n = len(real)
    same = [(kernel(x, x).sum() - np.trace(kernel(x, x))) / (n * (n - 1)) for x in (real, fake)]
    return float(sum(same) - 2 * kernel(real, fake).mean())


def found_in(images: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """For each image, whether ``among`` holds exactly that image."""
    return (images.flatten(1)[:, None] == among.flatten(1)[None]).all(dim=-1).any(dim=-1)


def random_features(count: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)) + shift


@pytest.mark.parametrize(("real", "fake", "k", "shift"), [(200, 150, 5, 0.0), (120, 300, 3, 0.4), (64, 64, 5, 2.0)])
def test_prdc_equals_the_prdc_package(real: int, fake: int, k: int, shift: float) -> None:
    real_features, fake_features = random_features(real, 32, 0), random_features(fake, 32, 1, shift)
    expected = prdc.compute_prdc(real_features, fake_features, nearest_k=k)
    metric = PRDC(nearest_k=k)
    metric.set_reference(torch.from_numpy(real_features).float())
    for piece in torch.from_numpy(fake_features).float().split(50):
        metric.update(piece)
    ours = metric.compute()
    for measure, value in expected.items():
        assert float(ours[measure]) == pytest.approx(float(value), abs=1e-6), measure
    metric.reset()  # keeps the reference, drops the samples
    metric.update(torch.from_numpy(real_features).float())
    same = metric.compute()
    assert float(same["precision"]) == float(same["recall"]) == float(same["coverage"]) == 1.0


def test_prdc_bad_input() -> None:
    with pytest.raises(UserError, match=r"metrics.prdc.nearest_k=0 must be an integer >= 1"):
        PRDC(nearest_k=0)
    metric = PRDC(nearest_k=5)
    metric.set_reference(torch.randn(20, 8))
    metric.update(torch.randn(5, 8))
    with pytest.raises(UserError, match="need more than 5 reference and generated images, got 20 and 5"):
        metric.compute()


def test_kid_subsets_are_seeded_and_bounded() -> None:
    real, fake = torch.randn(40, 16), torch.randn(30, 16) + 0.3
    values = []
    for seed in (3, 3, 4):
        metric = KID(16, subsets=6, subset_size=10, seed=seed)
        metric.set_reference(real)
        metric.update(fake)
        values.append(tuple(float(v) for v in metric.compute()))
    assert values[0] == values[1] != values[2]
    whole = KID(16, subsets=2, subset_size=30, seed=0)
    whole.set_reference(real[:30])
    whole.update(fake)
    mean, std = whole.compute()  # every subset is the whole set: no spread
    assert float(mean) == pytest.approx(direct_kid(real[:30].double().numpy(), fake.double().numpy()), rel=1e-4)
    assert float(std) == pytest.approx(0, abs=1e-6 * abs(float(mean)) + 1e-9)
    too_big = KID(16, subsets=2, subset_size=31)
    too_big.set_reference(real)
    too_big.update(fake)
    with pytest.raises(UserError, match="KID subsets of 31 need at least as many reference and generated images"):
        too_big.compute()
    with pytest.raises(UserError, match="metrics.kid.subsets=0 must be an integer >= 1"):
        KID(16, subsets=0)


def test_one_feature_stage_feeds_fid_kid_and_prdc_the_features_of_each_image(tmp_path: Path) -> None:
    """KID and PRDC from the suite equal direct computations on features the extractor gives the same images."""
    gen = torch.Generator().manual_seed(0)
    train, test = torch.rand(40, 1, 8, 8, generator=gen) * 2 - 1, torch.rand(24, 1, 8, 8, generator=gen) * 2 - 1
    samples = torch.rand(24, 1, 8, 8, generator=gen) * 1.5 - 1
    settings = {"features": tiny_timm_settings(tmp_path), "fid": {}, "kid": {"subsets": 4}, "prdc": {}}
    plan = plan_measurement(settings, Splits(train, test), is_image=True, cache=tmp_path / "cache")
    assert set(plan.metrics) == {"fid", "kid", "prdc"} and plan.reference.held_out and plan.notes == ()
    suite = MetricSuite(plan, train, num_samples=24, cache=tmp_path / "cache")
    suite.update(samples[:10], index=torch.arange(10))
    suite.update(samples[10:], index=torch.arange(10, 24))
    values = suite.compute()
    extractor = load_extractor(resolve_weights(settings["features"]))
    with torch.no_grad():
        real, fake = (extractor(to_uint8_rgb(images)).double().numpy() for images in (test, samples))
    # subset_size 1000 is clamped to the 24 samples and 24 reference images: each subset is the whole set.
    assert values["kd_test_vit@24"] == pytest.approx(direct_kid(real, fake), rel=1e-4)
    expected = prdc.compute_prdc(real, fake, nearest_k=5)
    for measure, value in expected.items():
        assert values[f"{measure}_test_vit@24"] == pytest.approx(float(value), abs=1e-6)
    assert values["fd_test_vit@24"] > 0
    assert set(values) == {
        "fd_test_vit@24", "kd_test_vit@24", "kd_test_vit_std@24",
        *(f"{measure}_test_vit@24" for measure in ("precision", "recall", "density", "coverage")),
    }


def test_the_reference_is_a_seeded_subset_of_the_test_split_shared_by_every_run(fashion_stand_in: str) -> None:
    data = FashionMNISTDataModule(root=fashion_stand_in, num_train=100, num_val=8)
    reference = choose_reference(data, {"count": 20, "seed": 0})
    assert reference.held_out and reference.marker == "" and reference.note() is None
    assert reference.images.shape == (20, 1, 28, 28)
    test_split = data.test_subset(None, 0)
    assert test_split.shape[0] == 64  # the whole test split of the stand-in
    assert bool(found_in(reference.images, test_split).all())  # every reference image is a test image
    assert not bool(found_in(reference.images, data.train_data).any())  # and none is trained on
    # Another run (other data seed and size) is read against the same images; another seed picks others.
    other_run = FashionMNISTDataModule(root=fashion_stand_in, num_train=50, num_val=4, seed=7)
    assert torch.equal(choose_reference(other_run, {"count": 20, "seed": 0}).images, reference.images)
    assert not torch.equal(choose_reference(data, {"count": 20, "seed": 1}).images, reference.images)
    assert choose_reference(data, {"count": None}).images.shape[0] == 64
    assert choose_reference(data, {"count": 1000}).images.shape[0] == 64  # at most the whole split
    with pytest.raises(UserError, match="metrics.reference.count=1 must be an integer >= 2"):
        choose_reference(data, {"count": 1})


def test_without_a_test_split_the_reference_is_training_images_and_the_names_say_so(tmp_path: Path) -> None:
    data = DigitsDataModule(num_train=60, num_val=20)
    reference = choose_reference(data, {"count": 30, "seed": 0})
    assert not reference.held_out and reference.marker == "_train" and "no test split" in reference.note()
    assert bool(found_in(reference.images, data.train_data).all())
    settings = {"features": tiny_timm_settings(tmp_path), "reference": {"count": 30}, "fid": {}, "kid": {}, "prdc": {}}
    plan = plan_measurement(settings, data, is_image=True, cache=tmp_path / "cache")
    assert len(plan.notes) == 1 and "no test split" in plan.notes[0]
    suite = MetricSuite(plan, data.train_data, num_samples=12, cache=tmp_path / "cache")
    suite.update(data.train_data[:12])
    values = suite.compute()
    assert {"fd_test_vit_train@12", "kd_test_vit_train@12", "kd_test_vit_std_train@12"} <= set(values)
    assert "precision_test_vit_train@12" in values and not any("@" in k and "_train" not in k for k in values)


def test_evaluate_training_images_gives_the_datas_own_row(tmp_path: Path, fashion_stand_in: str) -> None:
    features = tiny_timm_settings(tmp_path)
    overrides = [
        "data=fashion_mnist", f"data.root={fashion_stand_in}", "data.num_train=100", "data.num_val=8",
        "training_images=16", "metrics.reference.count=32", "progress=false",
        f"metrics.features.source={features['source']}", f"metrics.features.model={features['model']}",
        "+metrics.features.model_kwargs.img_size=32", f"metrics.features.weights={features['weights']}",
        f"metrics.features.sha256={features['sha256']}",
    ]
    proc = run_module("lightning_diff.evaluate", *overrides, f"as_run={tmp_path / 'sweep' / 'data'}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["source"] == "training_images=16" and result["num_samples"] == 16
    # Written as a run, it is the data's reference row of a report of the sweep, judged "data" (not a copier).
    reported = run_module("lightning_diff.report", f"sweep={tmp_path / 'sweep'}", "reference=null", "figure=false")
    assert reported.returncode == 0, reported.stderr
    (row,) = json.loads((tmp_path / "sweep" / "verdicts.json").read_text())["rows"]
    assert (row["variant"], row["verdict"]) == ("training images", "data")
    with (tmp_path / "sweep" / "report.csv").open() as handle:
        (table,) = list(csv.DictReader(handle))
    assert float(table["kd_test_vit@16"]) == result["kd_test_vit@16"]
    # data_of= reads the data from a run directory (here the row just written): the same images, the same scores.
    again = run_module("lightning_diff.evaluate", *[o for o in overrides if not o.startswith("data")],
                       f"data_of={tmp_path / 'sweep' / 'data'}")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["kd_test_vit@16"] == result["kd_test_vit@16"]
    assert result["memorized_fraction"] == 1.0  # training images are their own nearest training image
    realism = ["fd_test_vit@16", "kd_test_vit@16", "kd_test_vit_std@16"]
    realism += [f"{measure}_test_vit@16" for measure in ("precision", "recall", "density", "coverage")]
    for key in realism:
        assert np.isfinite(result[key]), key
    assert "warning" not in proc.stderr  # the stand-in has a test split: nothing to say
    proc = run_module("lightning_diff.evaluate", *overrides, "training_images=101")
    assert proc.returncode == 2 and "training_images=101 must be between 1 and the 100 training images" in proc.stderr


def test_the_fallback_is_said_once_by_the_measuring_callback(tmp_path: Path) -> None:
    """A training run on data without a test split warns once that realism is read against training images."""
    from conftest import train_config
    from lightning_diff.training import train

    features = tiny_timm_settings(tmp_path)
    cfg = train_config(
        tmp_path / "run", "data=digits", "data.num_train=60", "data.num_val=20", "denoiser=linear", "denoiser.fit=sgd",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "num_samples=4", "callbacks.measure.every_n_steps=0",
        "callbacks.measure.num_samples=8", "metrics.reference.count=16", "metrics.features.source=timm",
        "metrics.features.model=test_vit", "+metrics.features.model_kwargs.img_size=32",
        f"metrics.features.weights={features['weights']}", f"metrics.features.sha256={features['sha256']}",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg)
    assert len([w for w in caught if "no test split" in str(w.message)]) == 1
    assert {"fd_test_vit_train@8", "kd_test_vit_train@8", "precision_test_vit_train@8"} <= set(summary["measure"])
