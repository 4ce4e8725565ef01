"""Issue #22: an interval for every per-sample statistic. The percentile bootstrap over samples
(through ``compare``'s own code path) covers known population values, a paired difference of
one generator with itself contains 0, and the Clopper-Pearson bound equals scipy's."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy import integrate, optimize, stats

from lightning_diff.compare import compare
from lightning_diff.errors import UserError
from lightning_diff.metrics.intervals import bootstrap, clopper_pearson, nan_mean, paired_difference
from lightning_diff.metrics.r2 import per_sample_r2
from lightning_diff.run.cli import CONF_DIR

# The planted generator: a reference a_i of PIXELS standard normal pixels and b_i = a_i + s_i e_i,
# e_i standard normal and the noise scale s_i ~ Uniform(LOW, HIGH), all independent.
PIXELS, LOW, HIGH = 16, 0.3, 1.5
SAMPLES, REPETITIONS = 128, 100


def draw(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(count, 1, 4, 4))
    s = rng.uniform(LOW, HIGH, size=(count, 1, 1, 1))
    return a, a + s * rng.normal(size=a.shape)


def r2_population_median() -> float:
    """Analytic: r2_i = 1 - s^2 |e|^2 / |a - mean a|^2 = 1 - s^2 d/(d-1) F with F ~ F(d, d-1)
    (chi^2_d over chi^2_{d-1}, independent), so P(r2 <= m) = E_s sf_F((1-m)(d-1)/(d s^2)),
    integrated over s by quadrature and solved for 1/2."""
    d = PIXELS

    def below(m: float) -> float:
        def tail(s: float) -> float:
            return stats.f.sf((1 - m) * (d - 1) / (d * s * s), d, d - 1)

        return integrate.quad(tail, LOW, HIGH, epsabs=1e-12, epsrel=1e-12)[0] / (HIGH - LOW)

    return optimize.brentq(lambda m: below(m) - 0.5, -50.0, 1.0, xtol=1e-12)


def monte_carlo_population() -> dict[str, float]:
    """The population median Pearson r and mean cosine (the population mean, 0, removed) from one
    draw of 200,000 samples, in numpy: their Monte Carlo errors (~0.0005 and ~0.0004) are below a
    hundredth of the 128-sample intervals' widths (~0.08 and ~0.06)."""
    a, b = draw(np.random.default_rng(2024), 200_000)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    ac, bc = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    pearson = (ac * bc).sum(1) / np.sqrt((ac**2).sum(1) * (bc**2).sum(1))
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"pearson_r_samples_median": float(np.median(pearson)), "agreement_cosine_mean": float(cosine.mean())}


def test_compare_intervals_cover_the_population_values_in_at_least_90_of_100_repetitions(tmp_path, one_thread):
    population = {"r2_samples_median": r2_population_median(), **monte_carlo_population()}
    a_path, b_path = tmp_path / "a.npz", tmp_path / "b.npz"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="compare", overrides=[f"a={a_path}", f"b={b_path}", "resamples=1000"])
    seeds = np.arange(SAMPLES, dtype=np.uint64)
    intervals: dict[str, list[dict]] = {key: [] for key in population}
    for repetition in range(REPETITIONS):
        a, b = draw(np.random.default_rng(repetition), SAMPLES)
        np.savez(a_path, samples=a, seeds=seeds)
        np.savez(b_path, samples=b, seeds=seeds)
        result = compare(cfg)
        for key in population:
            intervals[key].append(result[f"{key}_ci"])
    for key, truth in population.items():
        covered = sum(ci["low"] <= truth <= ci["high"] for ci in intervals[key])
        assert covered >= 90, f"{key}: {covered} of {REPETITIONS} intervals cover {truth:.4f}"
        # Not wide for safety: the mean width is about 2 x 1.96 x the spread of the estimates over repetitions.
        width = np.mean([ci["high"] - ci["low"] for ci in intervals[key]])
        spread = 2 * 1.96 * np.std([ci["value"] for ci in intervals[key]])
        assert 0.7 < width / spread < 1.4, f"{key}: mean width {width:.4f}, 2 x 1.96 x sd of estimates {spread:.4f}"


def test_a_paired_difference_of_one_generator_with_itself_contains_zero(one_thread):
    identical = torch.randn(64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    degenerate = paired_difference(identical, identical)
    assert (degenerate.value, degenerate.low, degenerate.high) == (0.0, 0.0, 0.0)  # trivially: every draw cancels

    contains, excludes, paired_width, unpaired_width = 0, 0, [], []
    for repetition in range(REPETITIONS):
        # One reference and one noise scale per seed; two independent draws of the generator from it.
        rng = np.random.default_rng(1000 + repetition)
        a = torch.from_numpy(rng.normal(size=(SAMPLES, PIXELS)))
        s = torch.from_numpy(rng.uniform(LOW, HIGH, size=(SAMPLES, 1)))
        first, second, worse = (per_sample_r2(a, a + k * s * torch.from_numpy(rng.normal(size=a.shape)))
                                for k in (1.0, 1.0, 1.5))
        same = paired_difference(first, second, resamples=1000)
        contains += not same.excludes(0.0)
        paired_width.append(same.high - same.low)
        alone = [bootstrap(r2, resamples=1000, seed=i) for i, r2 in enumerate((first, second))]
        unpaired_width.append(np.hypot(*(ci.high - ci.low for ci in alone)))
        excludes += paired_difference(first, worse, resamples=1000).excludes(0.0)
    assert contains >= 90, f"{contains} of {REPETITIONS} paired differences of one generator contain 0"
    # Not by being wide: a generator with 1.5 x the noise is told apart, and pairing (the seed's
    # shared noise scale cancels) narrows the interval below the unpaired one.
    assert excludes >= 90, f"only {excludes} of {REPETITIONS} paired differences exclude 0 for 1.5 x the noise"
    assert np.mean(paired_width) < 0.85 * np.mean(unpaired_width)


@pytest.mark.parametrize("successes, trials", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (7, 17), (0, 256),
                                               (1, 256), (128, 256), (255, 256), (256, 256)])
def test_clopper_pearson_equals_scipy_exact_binomial_interval(successes, trials):
    exact = stats.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="exact")
    interval = clopper_pearson(successes, trials)
    assert interval.value == successes / trials
    assert interval.low == pytest.approx(exact.low, abs=1e-10)
    assert interval.high == pytest.approx(exact.high, abs=1e-10)


def test_clopper_pearson_with_no_success_allows_one_minus_alpha_half_to_the_one_over_n():
    assert clopper_pearson(0, 256).high == pytest.approx(1 - 0.025 ** (1 / 256), abs=1e-12)
    with pytest.raises(UserError, match="0 <= successes <= trials"):
        clopper_pearson(5, 4)


def test_bootstrap_bad_input_is_one_user_error_naming_it():
    with pytest.raises(UserError, match=r"one length, got shapes \[\(5,\), \(4,\)\].*same seeds"):
        paired_difference(torch.zeros(5), torch.zeros(4))
    for lone in (torch.zeros(1), torch.tensor(0.5)):  # one-element metric results arrive 0-dimensional
        with pytest.raises(UserError, match="at least 2 samples, got 1; draw more samples"):
            bootstrap(lone)
    with pytest.raises(UserError, match="needs combine="):
        bootstrap([torch.zeros(5), torch.zeros(5)])
    with pytest.raises(UserError, match="resamples=10 at least 100"):
        bootstrap(torch.zeros(5), resamples=10)


def test_bootstrap_reproduces_from_its_seed_and_skips_nans():
    drawn = torch.randn(40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    values = torch.cat([drawn, torch.tensor([float("nan")])])
    assert bootstrap(values, seed=3) == bootstrap(values, seed=3) != bootstrap(values, seed=4)
    median, mean = bootstrap(values), bootstrap(values, nan_mean)
    assert median.value == pytest.approx(float(np.nanmedian(values.numpy())), abs=1e-12)
    assert mean.value == pytest.approx(float(np.nanmean(values.numpy())), abs=1e-12)
    assert median.low < median.value < median.high and mean.low < mean.value < mean.high
