"""Discrete grids of K noise levels, ascending in t.

Three spacings: ``linear`` in t (the paper's default), ``cosine`` (Nichol & Dhariwal 2021,
with t = 1 - alpha_bar), and ``edm`` (Karras et al. 2022: sigma^(1/rho) linearly spaced).
Samplers walk a grid from its largest level to its smallest.
"""

import math

import torch
from torch import Tensor

from lightning_diff.errors import UserError

GRID_KINDS = ("linear", "cosine", "edm")


class NoiseGrid:
    """K noise variances in (0, 1), strictly ascending.

    A plain class rather than a dataclass: Hydra would turn a dataclass passed to
    ``instantiate`` into a config node.
    """

    def __init__(self, levels: Tensor) -> None:
        if levels.dim() != 1 or levels.numel() == 0:
            raise UserError(f"a noise grid must be a non-empty 1-D list of levels, got shape {tuple(levels.shape)}")
        bad = [float(v) for v in levels if not (0.0 < float(v) < 1.0)]
        if bad:
            raise UserError(
                f"noise grid has level(s) {bad} outside (0, 1); t is the noise variance, so every level "
                "must satisfy 0 < t < 1 (check diffusion.t_min / diffusion.t_max / diffusion.grid_values)"
            )
        if levels.numel() > 1 and not bool((levels[1:] > levels[:-1]).all()):
            raise UserError(f"noise grid levels must be strictly ascending, got {levels.tolist()}")
        self.levels = levels

    def __len__(self) -> int:
        return self.levels.numel()

    def index_of(self, t: Tensor) -> Tensor:
        """Index of the grid level each entry of ``t`` equals."""
        return level_index(self.levels, t)


def level_index(levels: Tensor, t: Tensor) -> Tensor:
    """Index of the entry of ``levels`` that each entry of ``t`` equals (nearest, to 1e-5)."""
    levels = levels.to(device=t.device, dtype=t.dtype)
    idx = torch.argmin((t.reshape(-1, 1) - levels.reshape(1, -1)).abs(), dim=1)
    if t.numel() and float((levels[idx] - t.reshape(-1)).abs().max()) > 1e-5:
        raise UserError(
            f"a per-level denoiser was called at t={t.reshape(-1)[0].item():.6g}, which is not on its "
            f"training grid {[round(v, 6) for v in levels.tolist()]}; sample on the run's own grid, or "
            "train a 'conditioned' or 'blind' denoiser to use other levels"
        )
    return idx.reshape(t.shape)


def make_grid(
    num_levels: int,
    kind: str = "linear",
    t_min: float = 1e-3,
    t_max: float = 0.999,
    rho: float = 7.0,
    levels: list[float] | None = None,
) -> NoiseGrid:
    """Build a grid; ``levels`` (explicit values) overrides the spacing rule."""
    if levels is not None:
        return NoiseGrid(torch.tensor(sorted(float(v) for v in levels), dtype=torch.float64))
    if num_levels < 1:
        raise UserError(f"diffusion.num_levels must be >= 1, got {num_levels}")
    if kind not in GRID_KINDS:
        raise UserError(f"diffusion.grid={kind!r} is not a grid kind; valid: {', '.join(GRID_KINDS)}")
    if not (0.0 < t_min < 1.0 and 0.0 < t_max < 1.0):
        raise UserError(
            f"diffusion.t_min={t_min} and diffusion.t_max={t_max} must both lie in (0, 1): "
            "t is the noise variance"
        )
    if num_levels > 1 and not t_min < t_max:
        raise UserError(f"diffusion.t_min={t_min} must be below diffusion.t_max={t_max}")
    if num_levels == 1:
        return NoiseGrid(torch.tensor([t_max], dtype=torch.float64))
    frac = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float64)
    if kind == "linear":
        t = t_min + frac * (t_max - t_min)
    elif kind == "cosine":
        # Invert the cosine schedule's alpha_bar(s) = cos^2(pi/2 (s + 0.008) / 1.008) at both ends
        # so the grid spans exactly [t_min, t_max].
        offset = 0.008

        def s_of(t_val: float) -> float:
            return math.acos(math.sqrt(1.0 - t_val)) * 2.0 / math.pi * (1.0 + offset) - offset

        s = s_of(t_min) + frac * (s_of(t_max) - s_of(t_min))
        t = 1.0 - torch.cos(math.pi / 2.0 * (s + offset) / (1.0 + offset)) ** 2
    else:
        sig_min, sig_max = math.sqrt(t_min / (1 - t_min)), math.sqrt(t_max / (1 - t_max))
        inv = sig_min ** (1 / rho) + frac * (sig_max ** (1 / rho) - sig_min ** (1 / rho))
        sigma = inv**rho
        t = sigma**2 / (1 + sigma**2)
    t[0], t[-1] = t_min, t_max
    return NoiseGrid(t)
