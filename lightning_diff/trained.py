"""A finished run as one object: what every entry point asks of a run directory.

:meth:`TrainedRun.load` reads ``<run dir>/checkpoints/last.ckpt`` (ours, or one ``adopt`` wrote
for a model trained elsewhere) without running code, rebuilds the denoiser from the stored
config and gives its grid, data shape, config, sampler object, and :meth:`TrainedRun.draw`.
:meth:`TrainedRun.calls` records every denoiser call along the sampler (what ``compare``,
``calibrate`` and the report's explanations read per level).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_diff.compose import build
from lightning_diff.denoisers.contract import Denoiser
from lightning_diff.diffusion.draw import draw_samples
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.diffusion.samplers import Sampler, make_sampler
from lightning_diff.errors import UserError
from lightning_diff.run.checkpoint import load_checkpoint, run_config
from lightning_diff.run.rundir import checkpoint_path

WEIGHTS = {"ema": "state_dict", "raw": "current_model_state"}
# Runs written before the sampler node built the sampler object stored {name, batch_size} for this target.
LEGACY_SAMPLER = "lightning_diff.diffusion.samplers.SamplerChoice"


class Call(NamedTuple):
    """One denoiser call of a sampler: the level, the states it was given, and its x0 prediction."""

    t: float
    y: Tensor
    x0: Tensor


def sampler_from_config(node: dict[str, Any]) -> Sampler:
    """The sampler object a stored ``sampler`` config node describes."""
    if node.get("_target_") == LEGACY_SAMPLER:
        return make_sampler(str(node["name"]), batch_size=int(node["batch_size"]))
    return build(node, "sampler")


@dataclass
class TrainedRun:
    """A run directory's denoiser (eval mode), its grid, data shape and config, and its sampler."""

    location: Path
    denoiser: Denoiser
    grid: NoiseGrid
    data_shape: tuple[int, ...]
    is_image: bool
    config: dict[str, Any]
    sampler: Sampler

    @classmethod
    def load(cls, path: str | Path, weights: str = "ema") -> "TrainedRun":
        """The run of a run directory or of its checkpoint file (``weights``: ema | raw)."""
        if weights not in WEIGHTS:
            raise UserError(f"weights={weights!r} is not valid; choose one of {', '.join(WEIGHTS)}")
        path = Path(path).expanduser()
        ckpt = checkpoint_path(path) if path.is_dir() else path
        checkpoint = load_checkpoint(ckpt)
        info = run_config(checkpoint, ckpt)
        grid = NoiseGrid(torch.tensor(info["grid"], dtype=torch.float64))
        shape = tuple(int(size) for size in info["data_shape"])
        denoiser = build(info["config"]["denoiser"], "denoiser", data_shape=shape, grid=grid)
        state = checkpoint.get(WEIGHTS[weights], checkpoint["state_dict"])
        own = {key.removeprefix("denoiser."): value for key, value in state.items() if key.startswith("denoiser.")}
        broken = [key for key, value in own.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]
        if broken:
            raise UserError(f"{ckpt}: weights {', '.join(broken[:3])} hold NaN or infinite values; use an earlier checkpoint")
        try:
            denoiser.load_state_dict(own)
        except RuntimeError as err:
            raise UserError(f"{ckpt}: the weights do not fit the denoiser its config describes ({err})") from err
        sampler = sampler_from_config(info["config"]["sampler"])
        return cls(ckpt.parent.parent, denoiser.eval(), grid, shape, bool(info["is_image"]), info["config"], sampler)

    @property
    def name(self) -> str:
        """The run's variant, or its directory's name."""
        return str(self.config.get("variant") or self.location.name)

    def to(self, device: torch.device | str) -> "TrainedRun":
        self.denoiser.to(device)
        return self

    def draw(
        self,
        seeds: Sequence[int],
        *,
        sampler: Sampler | None = None,
        grid: NoiseGrid | None = None,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> Tensor:
        """One sample per seed with the run's sampler and grid (or others: ``grid`` must hold only
        levels the denoiser accepts), on the CPU."""
        chosen = self.grid if grid is None else grid
        if grid is not None and not self.denoiser.accepts_any_t and not same_levels(grid, self.grid):
            raise UserError(
                f"{self.location}: its {self.denoiser.conditioning} denoiser is defined only on its own grid of "
                f"{len(self.grid)} levels; sample it there (num_levels=null), or train one that accepts any t"
            )
        return draw_samples(
            self.denoiser.to(device), chosen, self.data_shape, seeds, sampler=sampler or self.sampler,
            is_image=self.is_image, device=device, progress=progress,
        )

    @torch.no_grad()
    def calls(self, seeds: Sequence[int], device: torch.device | str = "cpu", first_per_level: bool = True) -> list[Call]:
        """The denoiser calls of the run's sampler from ``seeds``, highest noise first: every call, or
        with ``first_per_level`` the first at each level (Heun asks twice at a level: its first
        state there is the one compared)."""
        recorded: list[Call] = []

        def recording(y: Tensor, t: Tensor) -> Tensor:
            out = self.denoiser(y, t)
            recorded.append(Call(float(t[0]), y.detach().cpu(), out.detach().cpu()))
            return out

        self.denoiser.to(device)
        self.sampler.sample(recording, self.grid, self.data_shape, seeds, batch_size=len(seeds), device=device)
        if not first_per_level:
            return recorded
        first: dict[float, Call] = {}
        for call in recorded:
            first.setdefault(round(call.t, 12), call)
        return list(first.values())

    def datamodule(self) -> Any:
        """The run's training data (set up), or one :class:`UserError` when it names none."""
        if not self.config.get("data"):
            raise UserError(
                f"{self.location} names no training data (a model adopted without data=); adopt it again with "
                "data=<its training images> to measure copying or calibrate against it"
            )
        datamodule = build(self.config["data"], "data")
        datamodule.setup("fit")
        return datamodule


def same_levels(first: NoiseGrid, second: NoiseGrid) -> bool:
    return len(first) == len(second) and bool(torch.allclose(first.levels, second.levels, rtol=0, atol=1e-12))
