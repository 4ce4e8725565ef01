"""One training objective for every family: x0-prediction MSE over noise levels.

How levels are drawn for a batch:

- ``discrete`` + ``random``: each sample gets a uniformly drawn grid level;
- ``discrete`` + ``every_level``: the batch is used at every grid level, as if each of the
  K per-level networks were trained on its own with that batch (the paper's setting);
- ``uniform``: t uniform in [t_min, t_max] (only for denoisers that accept any t);
- ``lognormal``: EDM's ln(sigma) ~ N(p_mean, p_std^2), clipped to [t_min, t_max].

Each sample's x0 MSE is weighted by ``level_weights``: none (all ones), K values (one per grid
level), or ``edm``, Karras et al.'s (2022) lambda(t) = 1 / c_out(t)^2 = (1 - t) / t + 1 / s^2 for
data standard deviation s. With edm preconditioning that is the unit-variance loss of the
network's own output F at every level; for any denoiser it is the x0 MSE divided by what the
best linear denoiser of variance-s^2 data leaves, s^2 t / ((1 - t) s^2 + t). A network shared
by all levels needs it: unweighted, the x0 MSE at t = 0.001 (~5e-4) is a 1/500 share of the
loss at t = 0.999, and the study's one-network UNet let its lowest level drift upward while the
others improved (docs/results.md). Per-level networks do not: each has its own parameters, and
Adam's step is unchanged by a constant factor on one network's loss.

All randomness of step ``s`` is drawn for the *global* batch from a generator seeded by
(seed, s) and each rank takes its rows, so a resumed run and a DDP run reproduce a
single-process run exactly.
"""


import torch
from torch import Tensor

from lightning_diff.diffusion.edm import check_sigma_data, loss_weight
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.process import DenoiserFn, add_noise, sigma_to_t
from lightning_diff.errors import UserError
from lightning_diff.progress import with_progress
from lightning_diff.seeding import generator

LEVEL_MODES = ("discrete", "uniform", "lognormal")
ASSIGNMENTS = ("random", "every_level")


class DiffusionObjective:
    """Draws (t, eps) for a batch and returns the weighted x0 MSE of a denoiser."""

    def __init__(
        self,
        grid: NoiseGrid,
        levels: str = "discrete",
        assignment: str = "random",
        level_weights: list[float] | str | None = None,
        sigma_data: float | None = None,
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ) -> None:
        if levels not in LEVEL_MODES:
            raise UserError(f"diffusion.level_sampling={levels!r} is not valid; choose one of {', '.join(LEVEL_MODES)}")
        if assignment not in ASSIGNMENTS:
            raise UserError(
                f"diffusion.assignment={assignment!r} is not valid; choose one of {', '.join(ASSIGNMENTS)}"
            )
        if assignment == "every_level" and levels != "discrete":
            raise UserError("diffusion.assignment=every_level needs diffusion.level_sampling=discrete")
        if isinstance(level_weights, str):
            if level_weights != "edm":
                raise UserError(
                    f"diffusion.level_weights={level_weights!r} is not valid; give null, {len(grid)} numbers, or edm"
                )
            if sigma_data is None:
                raise UserError(
                    "diffusion.level_weights=edm weights each level by 1 / c_out(t)^2, which needs the data's "
                    "standard deviation, but this denoiser has no sigma_data; use a denoiser with "
                    "denoiser.sigma_data (unet, dit, bottleneck_image) or give diffusion.level_weights as numbers"
                )
            check_sigma_data(sigma_data)
        elif level_weights is not None and len(level_weights) != len(grid):
            raise UserError(
                f"diffusion.level_weights has {len(level_weights)} entries but the grid has {len(grid)} levels"
            )
        self.grid = grid
        self.levels = levels
        self.assignment = assignment
        self.edm_weights = isinstance(level_weights, str)  # "edm", the one name accepted above
        self.sigma_data = sigma_data
        listed = level_weights is not None and not self.edm_weights
        self.level_weights = torch.tensor(level_weights, dtype=torch.float32) if listed else None
        self.p_mean = p_mean
        self.p_std = p_std

    def draw(
        self, global_batch: int, shape: tuple[int, ...], seed: int, step: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Levels and noise for the global batch of ``step``; rows are (level-major) samples.

        Returns ``t`` of shape (R,) and ``eps`` of shape (R, *shape) with R = global_batch, or
        K * global_batch for ``every_level`` (level k occupies rows k*B .. (k+1)*B - 1).
        """
        gen = generator(seed, step, device=device)
        levels = self.grid.levels.to(device=device, dtype=torch.float32)
        k = len(levels)
        if self.assignment == "every_level":
            t = levels.repeat_interleave(global_batch)
        elif self.levels == "discrete":
            t = levels[torch.randint(k, (global_batch,), generator=gen, device=device)]
        elif self.levels == "uniform":
            lo, hi = float(levels[0]), float(levels[-1])
            t = lo + (hi - lo) * torch.rand(global_batch, generator=gen, device=device)
        else:
            sigma = torch.exp(self.p_mean + self.p_std * torch.randn(global_batch, generator=gen, device=device))
            t = sigma_to_t(sigma).clamp(float(levels[0]), float(levels[-1]))
        eps = torch.randn((t.numel(), *shape), generator=gen, device=device)
        return t, eps

    def rows_for_rank(self, global_batch: int, rank: int, world_size: int) -> Tensor:
        """Indices of the rows of :meth:`draw`'s output that belong to ``rank``."""
        local = global_batch // world_size
        base = torch.arange(rank * local, (rank + 1) * local)
        if self.assignment != "every_level":
            return base
        return torch.cat([base + i * global_batch for i in range(len(self.grid))])

    def weights(self, t: Tensor) -> Tensor:
        """Per-sample loss weights (all ones unless ``level_weights`` is set)."""
        if self.edm_weights:
            return loss_weight(t, self.sigma_data)
        if self.level_weights is None:
            return torch.ones_like(t)
        idx = self.grid.index_of(t)
        return self.level_weights.to(t.device)[idx]

    def loss(
        self, denoiser: DenoiserFn, x0: Tensor, seed: int, step: int, rank: int = 0, world_size: int = 1
    ) -> Tensor:
        """Mean weighted x0 MSE of ``denoiser`` on this rank's slice ``x0`` of step ``step``."""
        global_batch = x0.shape[0] * world_size
        t, eps = self.draw(global_batch, tuple(x0.shape[1:]), seed, step, x0.device)
        rows = self.rows_for_rank(global_batch, rank, world_size).to(x0.device)
        t, eps = t[rows], eps[rows]
        repeats = t.numel() // x0.shape[0]
        clean = x0.repeat((repeats,) + (1,) * (x0.dim() - 1))
        y = add_noise(clean, t, eps)
        err = (denoiser(y, t) - clean).pow(2).flatten(1).mean(dim=1)
        return (self.weights(t) * err).mean()

    @torch.no_grad()
    def per_level_loss(
        self, denoiser: DenoiserFn, x0: Tensor, seed: int, batch_size: int = 1024, progress: bool = False
    ) -> Tensor:
        """Unweighted x0 MSE at every grid level on ``x0`` with fixed noise; shape (K,)."""
        out = torch.zeros(len(self.grid), dtype=torch.float64)
        gen = generator(seed, 0x5EED, device=x0.device)
        eps_all = torch.randn(x0.shape, generator=gen, device=x0.device)
        levels = with_progress(self.grid.levels.tolist(), desc=f"validation ({x0.shape[0]} images)", unit="level",
                               disable=not progress)
        for k, level in enumerate(levels):
            total = 0.0
            for start in range(0, x0.shape[0], batch_size):
                clean = x0[start : start + batch_size]
                t = torch.full((clean.shape[0],), level, device=x0.device, dtype=torch.float32)
                y = add_noise(clean, t, eps_all[start : start + batch_size])
                total += float((denoiser(y, t) - clean).pow(2).flatten(1).mean(dim=1).sum())
            out[k] = total / x0.shape[0]
        return out
