"""The ``diffusion`` config group as code: ``conf/diffusion/default.yaml`` is instantiated into
:class:`Diffusion`, which holds every setting (the YAML holds every default) and builds the
noise grid and the shared objective from them."""

from dataclasses import dataclass
from typing import Any

from lightning_diff.diffusion.grids import NoiseGrid, make_grid
from lightning_diff.diffusion.objective import DiffusionObjective
from lightning_diff.errors import UserError


@dataclass(frozen=True)
class Diffusion:
    """Noise grid and training objective settings (see conf/diffusion/default.yaml)."""

    num_levels: int
    grid: str
    t_min: float
    t_max: float
    rho: float
    grid_values: list[float] | None
    level_sampling: str
    assignment: str
    level_weights: list[float] | str | None
    p_mean: float
    p_std: float

    @classmethod
    def from_run(cls, spec: dict[str, Any]) -> "Diffusion":
        """The settings a finished run stored in its config (with or without ``_target_``)."""
        return cls(**{key: value for key, value in spec.items() if not key.startswith("_")})

    def noise_grid(self, num_levels: int | None = None) -> NoiseGrid:
        """The grid of training and sampling; ``num_levels`` asks for another size (same spacing rule)."""
        explicit = self.grid_values if num_levels is None else None
        return make_grid(
            self.num_levels if num_levels is None else num_levels,
            kind=self.grid,
            t_min=float(self.t_min),
            t_max=float(self.t_max),
            rho=float(self.rho),
            levels=None if explicit is None else list(explicit),
        )

    def objective(self, grid: NoiseGrid, conditioning: str, sigma_data: float | None = None) -> DiffusionObjective:
        """The shared objective; ``assignment=auto`` trains per-level networks on every level of each batch.
        ``sigma_data`` is the denoiser's (``level_weights=edm`` needs it)."""
        assignment = self.assignment
        if assignment == "auto":
            every = conditioning == "per_level" and self.level_sampling == "discrete"
            assignment = "every_level" if every else "random"
        if conditioning == "per_level" and self.level_sampling != "discrete":
            raise UserError(
                f"diffusion.level_sampling={self.level_sampling} draws levels off the grid, but per-level networks "
                "exist only at grid levels; use diffusion.level_sampling=discrete or denoiser.conditioning=conditioned|blind"
            )
        return DiffusionObjective(
            grid,
            levels=self.level_sampling,
            assignment=assignment,
            level_weights=self.level_weights,
            sigma_data=sigma_data,
            p_mean=float(self.p_mean),
            p_std=float(self.p_std),
        )
