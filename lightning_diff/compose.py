"""Build the run's objects from plain config dicts, with one clear error per mistake.

Shared by the entry points (train, sample), so a checkpoint's stored config rebuilds exactly
the denoiser that was trained.
"""

import inspect
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_diff.diffusion.grids import NoiseGrid, make_grid
from lightning_diff.diffusion.objective import DiffusionObjective
from lightning_diff.errors import UserError


def plain(node: Any) -> Any:
    """A resolved, plain-Python copy of an OmegaConf node (or the value itself)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def build(node: Any, group: str, **runtime: Any) -> Any:
    """Instantiate ``node`` (with ``_target_``) plus ``runtime`` keyword arguments.

    Keys the target does not accept are reported by name, with the valid ones listed.
    """
    spec = dict(plain(node))
    target = spec.get("_target_")
    if target is None:
        raise UserError(f"config group '{group}' has no _target_; pick one of the options in conf/{group}/")
    try:
        obj = get_object(target)
    except Exception as err:
        raise UserError(f"{group}._target_={target!r} cannot be imported ({err})") from err
    signature = inspect.signature(obj)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not accepts_any:
        valid = [name for name in signature.parameters if name not in runtime]
        unknown = [key for key in spec if not key.startswith("_") and key not in signature.parameters]
        if unknown:
            raise UserError(
                f"{', '.join(f'{group}.{key}' for key in unknown)}: not a setting of {target}; "
                f"valid settings: {', '.join(valid)}"
            )
    try:
        return instantiate(spec, **runtime, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"could not build {group} ({target}): {cause or err}") from err


def grid_from(diffusion: dict[str, Any], num_levels: int | None = None) -> NoiseGrid:
    """The noise grid a ``diffusion`` config describes (optionally with another level count)."""
    values = diffusion.get("grid_values")
    return make_grid(
        num_levels if num_levels is not None else int(diffusion["num_levels"]),
        kind=diffusion.get("grid", "linear"),
        t_min=float(diffusion.get("t_min", 1e-3)),
        t_max=float(diffusion.get("t_max", 0.999)),
        rho=float(diffusion.get("rho", 7.0)),
        levels=None if values is None or num_levels is not None else list(values),
    )


def objective_from(diffusion: dict[str, Any], grid: NoiseGrid, conditioning: str) -> DiffusionObjective:
    """The shared objective; ``assignment=auto`` trains per-level networks on every level."""
    assignment = diffusion.get("assignment", "auto")
    level_sampling = diffusion.get("level_sampling", "discrete")
    if assignment == "auto":
        assignment = "every_level" if conditioning == "per_level" and level_sampling == "discrete" else "random"
    if conditioning == "per_level" and level_sampling != "discrete":
        raise UserError(
            f"diffusion.level_sampling={level_sampling} draws levels off the grid, but per-level networks exist "
            "only at grid levels; use diffusion.level_sampling=discrete or denoiser.conditioning=conditioned|blind"
        )
    return DiffusionObjective(
        grid,
        levels=level_sampling,
        assignment=assignment,
        level_weights=diffusion.get("level_weights"),
        p_mean=float(diffusion.get("p_mean", -1.2)),
        p_std=float(diffusion.get("p_std", 1.2)),
    )
