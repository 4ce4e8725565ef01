"""The shared objective: grids, level draws, DDP row slicing."""

import pytest
import torch

from lightning_diff.diffusion.edm import coefficients
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.diffusion.objective import DiffusionObjective
from lightning_diff.errors import UserError


@pytest.mark.parametrize("kind", ["linear", "cosine", "edm"])
def test_grids_span_the_requested_range_ascending(kind):
    grid = make_grid(10, kind=kind, t_min=0.01, t_max=0.99)
    levels = grid.levels
    assert len(grid) == 10
    assert torch.all(levels[1:] > levels[:-1])
    assert levels[0].item() == pytest.approx(0.01) and levels[-1].item() == pytest.approx(0.99)


def test_grid_kinds_differ():
    linear = make_grid(10, "linear").levels
    edm = make_grid(10, "edm").levels
    assert not torch.allclose(linear, edm)


def test_grid_level_outside_unit_interval_is_refused():
    with pytest.raises(UserError, match=r"outside \(0, 1\)"):
        make_grid(3, levels=[0.2, 0.5, 1.2])
    with pytest.raises(UserError, match="t_min"):
        make_grid(3, t_min=0.0)


def test_every_level_assignment_covers_each_level_once_per_sample():
    grid = make_grid(4)
    objective = DiffusionObjective(grid, assignment="every_level")
    t, eps = objective.draw(6, (3,), seed=0, step=0, device=torch.device("cpu"))
    assert t.shape == (24,) and eps.shape == (24, 3)
    assert torch.equal(torch.bincount(grid.index_of(t)), torch.full((4,), 6))


def test_rank_slices_reassemble_the_global_batch():
    grid = make_grid(3)
    for assignment in ("random", "every_level"):
        objective = DiffusionObjective(grid, assignment=assignment)
        rows = torch.cat([objective.rows_for_rank(8, rank, 2) for rank in range(2)])
        total = 8 * (3 if assignment == "every_level" else 1)
        assert torch.equal(rows.sort().values, torch.arange(total))


def test_loss_is_deterministic_in_seed_and_step():
    grid = make_grid(5)
    objective = DiffusionObjective(grid)
    x0 = torch.randn(16, 4)

    def denoiser(y, t):
        return 0.5 * y

    a = objective.loss(denoiser, x0, seed=1, step=3)
    b = objective.loss(denoiser, x0, seed=1, step=3)
    c = objective.loss(denoiser, x0, seed=1, step=4)
    assert a == b and a != c


def test_continuous_levels_stay_in_range():
    grid = make_grid(10, t_min=0.01, t_max=0.9)
    for mode in ("uniform", "lognormal"):
        objective = DiffusionObjective(grid, levels=mode)
        t, _ = objective.draw(1000, (2,), seed=0, step=0, device=torch.device("cpu"))
        assert t.min() >= 0.01 - 1e-7 and t.max() <= 0.9 + 1e-7
        assert t.unique().numel() > 100


def test_edm_weights_are_one_over_c_out_squared_and_normalize_the_linear_denoisers_error():
    sigma_data = 0.5
    objective = DiffusionObjective(make_grid(10), level_weights="edm", sigma_data=sigma_data)
    t = torch.tensor([0.001, 0.01, 0.3, 0.7, 0.999], dtype=torch.float64)
    _, _, c_out = coefficients(t, sigma_data)
    assert torch.allclose(objective.weights(t), c_out.pow(-2), rtol=1e-9)
    # Monte Carlo: Gaussian data of variance s^2 denoised by its best linear estimate
    # (c_skip y): its weighted x0 MSE is 1 at every level, within 2% sampling error.
    gen = torch.Generator().manual_seed(0)
    x0 = sigma_data * torch.randn(200_000, generator=gen, dtype=torch.float64)
    eps = torch.randn(200_000, generator=gen, dtype=torch.float64)
    for level in t.tolist():
        level_t = torch.tensor(level, dtype=torch.float64)
        y = (1 - level_t).sqrt() * x0 + level_t.sqrt() * eps
        _, c_skip, _ = coefficients(level_t, sigma_data)
        weighted = objective.weights(level_t) * (c_skip * y - x0).pow(2).mean()
        assert float(weighted) == pytest.approx(1.0, rel=0.02)


def test_bad_level_weights_are_refused_with_the_fix():
    grid = make_grid(4)
    with pytest.raises(UserError, match="level_weights='snr' is not valid"):
        DiffusionObjective(grid, level_weights="snr", sigma_data=0.5)
    with pytest.raises(UserError, match="no sigma_data"):
        DiffusionObjective(grid, level_weights="edm")
    with pytest.raises(UserError, match="3 entries but the grid has 4"):
        DiffusionObjective(grid, level_weights=[1.0, 2.0, 3.0])


def test_per_level_networks_train_the_same_under_any_level_weights():
    """The reason the per-level presets need no weighting: each level's network has its own
    parameters, so a weight only scales that network's gradient, and Adam's step ignores it."""
    grid = make_grid(2, t_min=0.01, t_max=0.5)
    x0 = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))

    def train(level_weights):
        torch.manual_seed(0)
        nets = torch.nn.ModuleList(torch.nn.Linear(6, 6) for _ in range(2))
        objective = DiffusionObjective(grid, assignment="every_level", level_weights=level_weights, sigma_data=0.5)
        optimizer = torch.optim.Adam(nets.parameters(), lr=1e-2)

        def denoiser(y, t):
            index = grid.index_of(t)
            return torch.stack([nets[int(k)](row) for row, k in zip(y, index)])

        for step in range(20):
            optimizer.zero_grad()
            objective.loss(denoiser, x0, seed=0, step=step).backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in nets.parameters()])

    plain = train(None)
    assert torch.allclose(train("edm"), plain, atol=1e-5)
    assert torch.allclose(train([1.0, 1000.0]), plain, atol=1e-5)
