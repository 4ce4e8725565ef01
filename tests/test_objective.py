"""The shared objective: grids, level draws, DDP row slicing."""

import pytest
import torch

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
