"""How a denoiser learns which noise level it is at: the three conditioning modes.

- ``per_level``: K independent networks, one per grid level, none sees t (the paper);
- ``conditioned``: one network that receives a noise embedding (DDPM / EDM practice);
- ``blind``: one network that never sees t (Kadkhodaie et al. 2024).

Every wrapped network is still a ``D(y, t) -> x0_hat`` module.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_diff.diffusion.grids import NoiseGrid, level_index
from lightning_diff.errors import UserError

MODES = ("per_level", "conditioned", "blind")


class PerLevel(nn.Module):
    """K networks ``net_k(y)``; each sample is routed to the network of its grid level."""

    def __init__(self, nets: list[nn.Module], grid: NoiseGrid) -> None:
        super().__init__()
        if len(nets) != len(grid):
            raise ValueError(f"{len(nets)} networks for a grid of {len(grid)} levels")
        self.nets = nn.ModuleList(nets)
        self.register_buffer("levels", grid.levels.clone().float())

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        idx = level_index(self.levels, t)
        levels, counts = torch.unique_consecutive(idx, return_counts=True)
        if levels.numel() == torch.unique(levels).numel():
            # Rows come in one contiguous block per level (the every_level layout): slice, no scatter.
            blocks = torch.split(y, counts.tolist())
            return torch.cat([self.nets[k](block) for k, block in zip(levels.tolist(), blocks)])
        out = torch.empty_like(y)
        for k in torch.unique(idx).tolist():
            rows = (idx == k).nonzero(as_tuple=True)[0]
            out[rows] = self.nets[k](y[rows])
        return out


class Blind(nn.Module):
    """One network that ignores the noise level."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return self.net(y)


class NoiseEmbedding(nn.Module):
    """Fourier features of c_noise = ln(sigma) / 4 (Karras et al. 2022), then an MLP."""

    def __init__(self, dim: int, num_frequencies: int = 32) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), num_frequencies))
        self.register_buffer("freqs", freqs)
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        c_noise = 0.125 * torch.log(t / (1.0 - t))  # ln(sigma) / 4 with sigma^2 = t / (1 - t)
        angles = c_noise.reshape(-1, 1).float() * self.freqs.reshape(1, -1)
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=1))


def wrap(
    conditioning: str,
    grid: NoiseGrid,
    make_net: Callable[[], nn.Module],
    make_conditioned_net: Callable[[], nn.Module] | None = None,
    family: str = "this family",
) -> nn.Module:
    """Build a ``D(y, t)`` module in the requested conditioning mode.

    ``make_net`` builds one network ``net(y)``; ``make_conditioned_net`` one ``net(y, t)``.
    """
    if conditioning == "per_level":
        return PerLevel([make_net() for _ in range(len(grid))], grid)
    if conditioning == "blind":
        return Blind(make_net())
    if conditioning == "conditioned":
        if make_conditioned_net is None:
            raise UserError(
                f"denoiser.conditioning=conditioned is not available for {family}; use per_level or blind"
            )
        return make_conditioned_net()
    raise UserError(f"denoiser.conditioning={conditioning!r} is not valid; choose one of {', '.join(MODES)}")
