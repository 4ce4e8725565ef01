"""The running posterior (lightning_diff/denoisers/patch_posterior.py): its weights, and the ordered
blocks that pass over provably negligible candidates."""

import math

import pytest
import torch

from lightning_diff.denoisers import patch_posterior
from lightning_diff.denoisers.patch_candidates import PatchSet
from lightning_diff.denoisers.patch_posterior import (
    SMALLEST_EXPONENT,
    Band,
    RunningPosterior,
    shifted_weights,
)


def test_float64_logits_never_give_subnormal_weights_and_keep_the_rest_exact() -> None:
    logits = torch.tensor([[0.0, -10.5, -125.0, -130.0, -149.0, -1000.0]], dtype=torch.float64)
    weights = shifted_weights(logits.clone(), torch.zeros(1, 1, dtype=torch.float64), torch.float32)
    smallest_normal = torch.finfo(torch.float32).tiny
    assert weights.dtype == torch.float32
    assert bool((weights >= smallest_normal).all())
    expected = torch.exp2(logits.clamp_min(SMALLEST_EXPONENT)).float()
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=0.0)


def test_posterior_mean_over_candidates_far_below_the_best_matches_float64_softmax() -> None:
    # One query against candidates whose logits fall in and below float32's subnormal range.
    generator = torch.Generator().manual_seed(0)
    count, dim = 3000, 4
    operands = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    offsets = -torch.linspace(0, 400, count, dtype=torch.float64)
    scaled = torch.zeros(1, dim, dtype=torch.float64)
    centres = torch.rand(count, 1, generator=generator) * 2 - 1
    posterior = RunningPosterior(scaled, channels=1)
    posterior.add(operands, offsets, torch.cat([centres, torch.ones(count, 1)], dim=1))
    exact = (torch.softmax(offsets * math.log(2.0), 0) * centres[:, 0].double()).sum()
    assert abs(float(posterior.means()[0, 0]) - float(exact)) < 1e-6


def posterior_case(t: float, seed: int = 0):
    """Noisy copies of candidate patches and their candidate set: images of one grey level each
    plus texture, so the patches spread along their leading direction as image patches do."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.rand(30, 1, 1, 1, generator=generator) * 2 - 1
    images = levels + 0.2 * torch.randn(30, 1, 12, 12, generator=generator)
    patches = PatchSet(images, 3, range(1, 11), range(1, 11), -1)  # 3,000 inside patches, D = 9
    stats = patches.statistics()
    a = math.sqrt(1.0 - t)
    candidates = patches.gather(torch.arange(patches.count))
    picked = candidates[torch.randint(0, patches.count, (2000,), generator=generator)]
    queries = a * picked + math.sqrt(t) * torch.randn(picked.shape, generator=generator)
    return queries, patches, stats, a, candidates


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 250 queries and runs of 128 candidates, so a small case has several of each."""
    monkeypatch.setattr(patch_posterior, "QUERY_ROWS", 250)
    monkeypatch.setattr(patch_posterior, "BLOCK_ELEMENTS", 250 * 128)


def float64_posterior(queries: torch.Tensor, candidates: torch.Tensor, centres: torch.Tensor, a: float, t: float):
    logits = -torch.cdist(queries.double(), a * candidates.double()).pow(2) / (2 * t)
    return torch.softmax(logits, dim=1) @ centres.double()


@pytest.mark.parametrize(("t", "share"), [(1e-3, 0.4), (0.02, 0.85)])  # this case evaluates 0.32 and 0.74
def test_ordered_blocks_pass_over_far_candidates_and_keep_the_exact_posterior(
    t: float, share: float, small_blocks: None
) -> None:
    queries, patches, stats, a, candidates = posterior_case(t)
    direction = patches.leading_direction(stats.mean)
    ordered, evaluated = patch_posterior.exact_posterior(queries, patches, stats, a, t, direction)
    plain, every = patch_posterior.exact_posterior(queries, patches, stats, a, t)
    assert every == queries.shape[0] * patches.count
    assert evaluated < share * every  # the rest were provably negligible
    expected = float64_posterior(queries, candidates, patches.centres(candidates), a, t)
    assert float((ordered.double() - expected).abs().max()) < 1e-5
    assert float((ordered - plain).abs().max()) < 1e-6


def test_nothing_is_passed_over_at_high_noise(small_blocks: None) -> None:
    t = 0.9
    queries, patches, stats, a, candidates = posterior_case(t, seed=1)
    ordered, evaluated = patch_posterior.exact_posterior(queries, patches, stats, a, t, patches.leading_direction(stats.mean))
    assert evaluated == queries.shape[0] * patches.count
    expected = float64_posterior(queries, candidates, patches.centres(candidates), a, t)
    assert float((ordered.double() - expected).abs().max()) < 1e-5


def test_band_gap_never_exceeds_the_distance_of_any_pair() -> None:
    generator = torch.Generator().manual_seed(2)
    queries, candidates = torch.randn(200, 6, generator=generator), torch.randn(300, 6, generator=generator) * 2
    direction = torch.randn(6, generator=generator)
    direction /= direction.norm()
    a, t = 0.8, 0.1
    along = queries @ direction
    band = Band.of(queries, along, a, t)
    positions = (candidates @ direction).sort()
    for first in range(0, 300, 50):
        run = positions.indices[first : first + 50]
        bound = band.gap(torch.stack([positions.values[first], positions.values[first + 49]])[None].double())
        distances = torch.cdist(queries.double(), a * candidates[run].double())
        assert float(bound) <= float(distances.min()) + 1e-9
