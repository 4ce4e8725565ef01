"""Issue #4: the theory of what each family generates, checked against fitted denoisers.

The predictions come from lightning_diff.theory; the samples from the real samplers.
"""

import math

import pytest
import torch
from torch import nn

from lightning_diff.data.synthetic import GaussianDataModule
from lightning_diff.denoisers.empirical import EmpiricalDenoiser
from lightning_diff.denoisers.linear import WienerDenoiser
from lightning_diff.denoisers.polynomial import build as build_polynomial
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.diffusion.samplers import make_sampler
from lightning_diff.errors import UserError
from lightning_diff.seeding import generator, sample_seeds
from lightning_diff.theory.check import MomentPairCheck
from lightning_diff.theory.empirical import copy_failure_bound
from lightning_diff.theory.linear import GaussianPrediction, probability_flow_variance, sampler_response
from lightning_diff.theory.moments import moment_gap, moment_matched_pair, skewed_base, split_polygons
from lightning_diff.theory.support import DecoderImage, distance_to_set, distance_to_subspace

GRID = make_grid(10)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gaussian16() -> torch.Tensor:
    """d = 16, eigenvalues log-spaced over three decades (1 .. 1e-3)."""
    return GaussianDataModule(dim=16, eig_max=1.0, eig_min=1e-3, num_train=10_000, num_val=10, seed=0).train_data


def wiener(data: torch.Tensor, rank: int | None = None) -> WienerDenoiser:
    denoiser = WienerDenoiser((data.shape[1],), rank=rank)
    denoiser.fit_data(data)
    return denoiser


def test_recursions_converge_to_the_probability_flow_and_to_the_training_eigenvalues():
    lam = torch.logspace(0, -3, 16, dtype=torch.float64)
    flow = probability_flow_variance(lam, 1e-3, 0.999)
    fine = make_grid(4000).levels.flip(0)
    for sampler, tol in (("ddim", 0.02), ("heun", 0.002)):
        scale, added = sampler_response(lam, fine, make_sampler(sampler))
        assert torch.all(added == 0), sampler  # deterministic samplers add no noise
        assert ((scale**2 / flow - 1).abs().max()) < tol, sampler
    # DDPM on a fine grid: the reverse chain reproduces the forward marginal at t_min,
    # whose denoised variance is lam^2 / (lam + sigma_min^2).
    scale, added = sampler_response(lam, fine, make_sampler("ddpm"))
    marginal = lam**2 / (lam + 1e-3 / 0.999)
    assert (((scale**2 + added) / marginal - 1).abs().max()) < 0.05
    # Endpoints pushed to 0 and 1 on a fine grid: the training eigenvalues themselves.
    limit = make_grid(20_000, t_min=1e-7, t_max=1 - 1e-7).levels.flip(0)
    for sampler in ("ddim", "ddpm", "heun"):
        scale, added = sampler_response(lam[:6], limit, make_sampler(sampler))
        assert (((scale**2 + added) / lam[:6] - 1).abs().max()) < 0.03, sampler


@pytest.mark.parametrize("name, settings", [("ddim", {}), ("ddpm", {}), ("ddim", {"eta": 0.5})])
def test_closed_form_linear_variances_match_the_exact_finite_grid_prediction(gaussian16, name, settings):
    sampler = make_sampler(name, **settings)
    samples = sampler.sample(wiener(gaussian16), GRID, (16,), sample_seeds(0, 50_000), batch_size=25_000)
    prediction = GaussianPrediction.from_data(gaussian16, GRID, sampler)
    measured = prediction.measured_variances(samples)
    relative = measured / prediction.variances - 1
    print(f"{sampler}: max relative error {relative.abs().max():.4f}; measured / training eigenvalue "
          f"{(measured / prediction.eigvals).numpy().round(3)}")
    assert relative.abs().max() < 0.02
    # The finite-grid effect is real and predicted: the smallest directions' variances differ
    # from the training eigenvalues, and from the same sampler on a 4000-level grid between
    # the same endpoints, by much more than the tolerance.
    smallest = slice(12, 16)
    assert torch.all((measured[smallest] / prediction.eigvals[smallest] - 1).abs() > 0.02)
    fine = GaussianPrediction.from_data(gaussian16, make_grid(4000), sampler)
    assert torch.all((measured[smallest] / fine.variances[smallest] - 1).abs() > 0.02)
    # The mean is predicted too (the start y ~ N(0, I) ignores the data mean).
    error = (samples.double().mean(dim=0) - prediction.mean).norm()
    assert error < 4 * math.sqrt(float(prediction.variances.sum()) / samples.shape[0])


def test_ddim_with_eta_interpolates_exactly_between_ddim_and_ddpm():
    lam = torch.logspace(0, -3, 16, dtype=torch.float64)
    levels = GRID.levels.flip(0)

    def response(name: str, **settings: float) -> tuple[torch.Tensor, torch.Tensor]:
        return sampler_response(lam, levels, make_sampler(name, **settings))

    for ours, theirs in ((response("ddim", eta=0.0), response("ddim")), (response("ddim", eta=1.0), response("ddpm"))):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
    scale, added = response("ddim", eta=0.5)
    assert torch.all(added > 0)  # fresh noise at every step but the last
    total = [sum(response("ddim", eta=eta)) for eta in (0.0, 0.5, 1.0)]
    assert not torch.allclose(total[0], total[1]) and not torch.allclose(total[1], total[2])


def test_heun_variances_are_exact_too(gaussian16):
    samples = make_sampler("heun").sample(wiener(gaussian16), GRID, (16,), sample_seeds(1, 20_000), batch_size=20_000)
    prediction = GaussianPrediction.from_data(gaussian16, GRID, make_sampler("heun"))
    relative = prediction.measured_variances(samples) / prediction.variances - 1
    assert relative.abs().max() < 0.04  # 20,000 samples: standard error 1%
    assert prediction.variances.max() / prediction.eigvals[prediction.variances.argmax()] > 2  # 10 Heun steps overshoot


def test_rank_4_samples_have_no_energy_outside_the_top_4_subspace(gaussian16):
    samples = make_sampler("ddim").sample(wiener(gaussian16, rank=4), GRID, (16,), sample_seeds(0, 10_000), batch_size=10_000)
    prediction = GaussianPrediction.from_data(gaussian16, GRID, make_sampler("ddim"), rank=4)
    energy = prediction.energy_outside_support(samples)
    print(f"energy outside the top-4 subspace: {energy:.3g} of the total")
    assert energy < 1e-8
    assert torch.all(prediction.variances[4:] == 0)
    relative = prediction.measured_variances(samples)[:4] / prediction.variances[:4] - 1
    assert relative.abs().max() < 0.05
    # A full-rank denoiser's samples are not confined to that subspace.
    full = make_sampler("ddim").sample(wiener(gaussian16), GRID, (16,), sample_seeds(0, 2_000), batch_size=2_000)
    assert prediction.energy_outside_support(full) > 1e-3


def test_moment_matched_pair_has_equal_moments_up_to_the_order_and_not_beyond():
    base = skewed_base(50, 2, 0.5, generator(7))
    first, second = moment_matched_pair(base, equal_up_to=4, radius=1.0)
    assert first.shape == second.shape == (250, 2)
    assert distance_to_set(first, second).max() > 0.1  # different sets
    for order in range(1, 5):
        assert moment_gap(first, second, order) < 1e-12, order
    assert moment_gap(first, second, 5) > 0.05
    low, high = moment_matched_pair(base, equal_up_to=3, radius=1.0)
    assert max(moment_gap(low, high, m) for m in range(1, 4)) < 1e-12
    assert moment_gap(low, high, 4) > 0.05
    recovered, radius, _ = split_polygons(first, 5)
    assert torch.allclose(recovered, base) and abs(radius - 1.0) < 1e-12


def fitted_polynomial(data: torch.Tensor) -> nn.Module:
    denoiser = build_polynomial((2,), GRID, degree=2, features="exact")
    denoiser.fit_data(data.float())  # float32, as a datamodule stores it
    return denoiser


def max_difference_per_level(first: nn.Module, second: nn.Module, probes: torch.Tensor) -> float:
    worst = 0.0
    with torch.no_grad():
        for t in GRID.levels.tolist():
            level = torch.full((probes.shape[0],), t)
            noisy = math.sqrt(1 - t) * probes + math.sqrt(t) * torch.randn(probes.shape, generator=generator(3))
            worst = max(worst, float((first(noisy, level) - second(noisy, level)).abs().max()))
    return worst


def test_degree_2_polynomial_sees_only_moments_up_to_order_4():
    base = skewed_base(400, 2, 0.5, generator(0))
    seeds = sample_seeds(0, 2_000)
    matched = [fitted_polynomial(data) for data in moment_matched_pair(base, equal_up_to=4, radius=1.0)]
    control = [fitted_polynomial(data) for data in moment_matched_pair(base, equal_up_to=3, radius=1.0)]
    probes = base[:500].float()
    denoiser_gap = max_difference_per_level(*matched, probes)
    print(f"matched pair: per-level denoiser difference {denoiser_gap:.3g}")
    assert denoiser_gap < 1e-6
    assert max_difference_per_level(*control, probes) > 1e-3
    for sampler in ("ddim", "ddpm"):
        same = [make_sampler(sampler).sample(d, GRID, (2,), seeds, batch_size=2_000) for d in matched]
        other = [make_sampler(sampler).sample(d, GRID, (2,), seeds, batch_size=2_000) for d in control]
        gap_same = float((same[0] - same[1]).abs().max())
        gap_other = float((other[0] - other[1]).abs().max())
        print(f"{sampler}: equal to order 4 -> {gap_same:.3g}; differing at order 4 -> {gap_other:.3g}")
        assert gap_same < 1e-5
        assert gap_other > 1e-2


class Circle(nn.Module):
    """z -> (cos z, sin z): a decoder whose image is the unit circle."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.cos(z), torch.sin(z)], dim=-1)


def test_decoder_image_distance_is_exact():
    image = DecoderImage(Circle(), torch.tensor([-math.pi]), torch.tensor([math.pi]), grid_points=2001)
    angles = torch.rand(300, generator=generator(1), dtype=torch.float64) * 2 * math.pi
    radii = torch.rand(300, generator=generator(2), dtype=torch.float64) * 1.5 + 0.25
    points = torch.stack([radii * torch.cos(angles), radii * torch.sin(angles)], dim=1)
    assert torch.allclose(image.distance(points), (radii - 1).abs(), atol=1e-10)
    # A piecewise-linear ReLU decoder: its own outputs are at distance 0, down to rounding.
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 2)).double().requires_grad_(False)
    codes = torch.rand(500, 1, generator=generator(3), dtype=torch.float64) * 4 - 2
    relu_image = DecoderImage(decoder, torch.tensor([-3.0]), torch.tensor([3.0]))
    assert relu_image.distance(decoder(codes)).max() < 1e-10
    assert relu_image.distance(decoder(codes) + torch.tensor([0.0, 0.1], dtype=torch.float64)).median() > 1e-3


def test_subspace_and_set_distances():
    basis = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    origin = torch.tensor([0.0, 0.0, 1.0])
    points = torch.tensor([[3.0, -2.0, 1.0], [0.0, 0.0, 4.0]])
    assert torch.allclose(distance_to_subspace(points, origin, basis), torch.tensor([0.0, 3.0], dtype=torch.float64))
    assert torch.allclose(distance_to_set(points, points[:1]), torch.tensor([0.0, math.sqrt(9 + 4 + 9)], dtype=torch.float64))


def test_copy_failure_bound_bounds_the_simulated_non_copy_rate():
    train_set = torch.randn(20, 8, generator=generator(4))
    denoiser = EmpiricalDenoiser((8,))
    denoiser.fit_data(train_set)
    for t in (0.02, 0.1, 0.3):
        # The bound's assumption: the last state is the forward process at t from a uniform training point.
        which = torch.randint(20, (20_000,), generator=generator(5))
        y = math.sqrt(1 - t) * train_set[which] + math.sqrt(t) * torch.randn(20_000, 8, generator=generator(6))
        outputs = denoiser(y, torch.full((20_000,), t))
        nearest = torch.cdist(outputs.double(), train_set.double()).topk(2, dim=1, largest=False).values
        non_copy = float((nearest[:, 0] >= nearest[:, 1] / 3).double().mean())
        bound = copy_failure_bound(train_set, t)
        print(f"t={t}: simulated non-copy rate {non_copy:.4f} <= bound {bound:.4f}")
        assert non_copy <= bound + 0.005
    assert copy_failure_bound(train_set, 1e-3) < 1e-6
    assert copy_failure_bound(train_set, 0.3) > 0.05


def test_moment_pair_check_refuses_data_that_is_not_a_pair_member(tmp_path):
    data = torch.randn(100, 2, generator=generator(0))
    with pytest.raises(UserError, match="regular 5-gon"):
        MomentPairCheck(figure=False)(
            denoiser=fitted_polynomial(data), train_data=data, grid=GRID, sampler=make_sampler("ddim"),
            samples=data[:10], run_dir=tmp_path,
        )
