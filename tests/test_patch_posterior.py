"""The running posterior's weights (lightning_diff/denoisers/patch_posterior.py)."""

import math

import torch

from lightning_diff.denoisers.patch_posterior import SMALLEST_EXPONENT, RunningPosterior, shifted_weights


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
