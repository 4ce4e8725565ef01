"""A diffusers ``UNet2DModel`` trained elsewhere, as our denoiser ``D(y, t) -> x0``.

A diffusers scheduler indexes its noise levels by integer timesteps tau with
``y = sqrt(alphas_cumprod[tau]) x0 + sqrt(1 - alphas_cumprod[tau]) eps``: our process with
``t = 1 - alphas_cumprod[tau]``. The adopted denoiser is defined at the levels of the timesteps it
was adopted with and nowhere else (a t off them is one clear error). At each it calls the UNet at
tau and turns what it predicts into x0 as the scheduler's step does:

- ``epsilon``: x0 = (y - sqrt(t) eps) / sqrt(1 - t);
- ``v_prediction``: x0 = sqrt(1 - t) y - sqrt(t) v;
- ``sample``: x0 as is;

then, as the scheduler's config says, dynamic thresholding (Saharia et al. 2022: per sample,
s = the ``dynamic_thresholding_ratio`` quantile of |x0| clamped to [1, ``sample_max_value``],
x0 = clamp(x0, -s, s) / s, diffusers' ``_threshold_sample``) or clipping to
±``clip_sample_range``. Our DDPM sampler then equals diffusers' DDPM step exactly; our DDIM
derives the step's noise direction from this limited x0, which is diffusers' DDIM with
``use_clipped_model_output=True`` (without clipping or thresholding the two are the same).

The coefficients come from the stored levels in float64, not from the t passed in: near t = 1 a
float32 t loses the 1 - t that epsilon's conversion divides by. :func:`from_diffusers` wraps a
UNet and a scheduler in memory; ``python -m lightning_diff.adopt`` writes one as a run directory.
"""

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from lightning_diff.denoisers.contract import Denoiser, check_choice, check_only_fit
from lightning_diff.denoisers.registry import family
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# A level passed in float32 differs from the stored float64 one by at most 6e-8; adjacent levels
# of a 1000-step linear schedule are 4e-6 apart at their closest.
LEVEL_TOLERANCE = 1e-6
INSTALL_HINT = "pip install 'lightning_diff[adopt]' (diffusers)"


def diffusers_module() -> Any:
    """The ``diffusers`` package, or one clear error naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as err:
        raise UserError(f"adopting a diffusers model needs diffusers, which is not installed: {INSTALL_HINT}") from err
    return diffusers


class AdoptedUNet(Denoiser):
    """A diffusers UNet2DModel at the timesteps of its scheduler (see the module docstring)."""

    conditioning = "conditioned"
    fit = "sgd"  # a trained network: the report explains it like our trained runs
    accepts_any_t = False

    def __init__(
        self, unet: nn.Module, prediction_type: str, timesteps: list[int], levels: list[float], limit: "Limit"
    ) -> None:
        super().__init__()
        self.unet = unet
        self.prediction_type = prediction_type
        # Plain tensors, not buffers: they are not weights, and casting the module must not round them.
        self.timesteps = torch.tensor(timesteps, dtype=torch.long)
        self.levels = torch.tensor(levels, dtype=torch.float64)
        self.limit = limit

    def grid(self) -> NoiseGrid:
        """The levels the denoiser is defined at."""
        return NoiseGrid(self.levels.clone())

    def level_index(self, t: Tensor) -> Tensor:
        """The index of the level each entry of ``t`` is, or one error naming t and the levels."""
        t = t.detach().reshape(-1).to("cpu", torch.float64)
        distance = (t.reshape(-1, 1) - self.levels.reshape(1, -1)).abs()
        nearest = distance.argmin(dim=1)
        off = distance.gather(1, nearest.reshape(-1, 1)).reshape(-1) > LEVEL_TOLERANCE
        if bool(off.any()):
            bad = int(off.nonzero()[0])
            near = int(nearest[bad])
            low, high, nearest_level = (float(self.levels[i]) for i in (0, -1, near))
            raise UserError(
                f"the adopted diffusers model was called at t={float(t[bad]):.6g}, which is none of the "
                f"{len(self.levels)} levels of its scheduler's timesteps (t = 1 - alphas_cumprod, from {low:.6g} to "
                f"{high:.6g}; nearest: t={nearest_level:.6g} at timestep {int(self.timesteps[near])}); sample on the "
                "run's own grid, or adopt the model again with another num_inference_steps=K"
            )
        return nearest

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        index = self.level_index(t)
        shape = (-1,) + (1,) * (y.dim() - 1)
        level = self.levels[index].to(device=y.device, dtype=y.dtype).reshape(shape)
        out = self.unet(y, self.timesteps[index].to(y.device)).sample
        if self.prediction_type == "epsilon":
            x0 = (y - level.sqrt() * out) / (1 - level).sqrt()
        elif self.prediction_type == "v_prediction":
            x0 = (1 - level).sqrt() * y - level.sqrt() * out
        else:
            x0 = out
        return self.limit(x0)


@dataclass(frozen=True)
class Limit:
    """How a scheduler's step limits x0: dynamic thresholding, else clipping, else not at all."""

    clip_sample: bool = False
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    @classmethod
    def of(cls, config: Any) -> "Limit":
        """The limit a scheduler's config sets (diffusers' defaults for what it does not name)."""
        return cls(**{item.name: item.type(config.get(item.name, item.default)) for item in fields(cls)})

    def __call__(self, x0: Tensor) -> Tensor:
        if self.thresholding:  # diffusers' _threshold_sample, per sample
            flat = x0.reshape(x0.shape[0], -1)
            work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()  # what quantile takes
            s = torch.quantile(work.abs(), self.dynamic_thresholding_ratio, dim=1)
            s = s.clamp(min=1, max=self.sample_max_value).unsqueeze(1)
            return (torch.clamp(work, -s, s) / s).to(x0.dtype).reshape(x0.shape)
        if self.clip_sample:
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0


def image_shape(unet_config: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of the images a UNet2DModel config makes."""
    size = unet_config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(unet_config["in_channels"]), int(height), int(width)


def check_unet_config(unet_config: dict[str, Any], data_shape: tuple[int, ...]) -> None:
    """One error for a UNet2DModel config that is no unconditional x0/eps/v network of ``data_shape``."""
    if unet_config.get("num_class_embeds") is not None or unet_config.get("class_embed_type") is not None:
        raise UserError(
            "the UNet2DModel is class-conditional (num_class_embeds / class_embed_type set): it needs class labels, "
            "and lightning_diff adopts unconditional models only"
        )
    if unet_config["out_channels"] != unet_config["in_channels"]:
        raise UserError(
            f"the UNet2DModel predicts {unet_config['out_channels']} channels of {unet_config['in_channels']}-channel "
            "images (a learned-variance model?); lightning_diff adopts models whose output is one image"
        )
    if tuple(data_shape) != image_shape(unet_config):
        raise UserError(
            f"the UNet2DModel makes images of shape {image_shape(unet_config)}, not the run's data shape "
            f"{tuple(data_shape)}; adopt the model again with python -m lightning_diff.adopt"
        )


@family("diffusers_unet")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "sgd",
    conditioning: str = "conditioned",
    unet_config: dict[str, Any] | None = None,
    prediction_type: str = "epsilon",
    timesteps: list[int] | None = None,
    levels: list[float] | None = None,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
) -> AdoptedUNet:
    """A UNet2DModel (random weights until its state is loaded) from its config, at ``timesteps``
    (ascending) whose levels are ``levels``; the rest is the scheduler's config."""
    if unet_config is None or timesteps is None or levels is None:
        raise UserError(
            "denoiser=diffusers_unet is a model trained elsewhere, not trained here: make a run directory of a saved "
            "diffusers model with python -m lightning_diff.adopt path=DIR out=RUN_DIR"
        )
    check_only_fit(fit, "sgd", "diffusers_unet (a trained network)")
    check_choice("conditioning", conditioning, ("conditioned",), "diffusers_unet (its UNet takes the timestep)")
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES, "diffusers_unet")
    if len(timesteps) != len(levels):
        raise UserError(f"denoiser.timesteps has {len(timesteps)} entries, denoiser.levels {len(levels)}; adopt again")
    check_unet_config(unet_config, data_shape)
    unet = diffusers_module().UNet2DModel.from_config(unet_config)
    limit = Limit(clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value)
    denoiser = AdoptedUNet(unet, prediction_type, list(timesteps), list(levels), limit)
    denoiser.level_index(grid.levels)  # every level of the run's grid is one of the model's
    return denoiser


def scheduler_settings(scheduler: Any) -> dict[str, Any]:
    """The settings of :func:`build` that a diffusers scheduler (``set_timesteps`` called) gives:
    prediction type, its timesteps ascending with their levels, its clipping and thresholding."""
    name = type(scheduler).__name__
    if not isinstance(getattr(scheduler, "alphas_cumprod", None), Tensor):
        raise UserError(
            f"the scheduler is a {name}, which has no alphas_cumprod: lightning_diff adopts models of a variance-"
            "preserving (DDPM-type) noise process, such as DDIMScheduler or DDPMScheduler configs"
        )
    config = scheduler.config
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise UserError(
            f"the scheduler's prediction_type={prediction!r} cannot be adopted; lightning_diff converts "
            f"{', '.join(PREDICTION_TYPES)} to x0"
        )
    timesteps = scheduler.timesteps
    if timesteps is None or not bool((timesteps == timesteps.round()).all()):
        raise UserError(
            f"the {name}'s timesteps {timesteps} are not whole timesteps of its alphas_cumprod; "
            "adopt it with a DDIM or DDPM scheduler config"
        )
    ascending = sorted(int(tau) for tau in timesteps)
    levels = [1.0 - float(scheduler.alphas_cumprod[tau].double()) for tau in ascending]
    if not all(0.0 < t < 1.0 for t in levels):
        raise UserError(
            f"the scheduler's timesteps {ascending} have levels t = 1 - alphas_cumprod of {levels[0]:.6g} to "
            f"{levels[-1]:.6g}; our samplers need 0 < t < 1 (a zero-terminal-SNR schedule reaches t = 1: "
            "adopt it with another timestep_spacing or fewer steps)"
        )
    return {"prediction_type": prediction, "timesteps": ascending, "levels": levels, **asdict(Limit.of(config))}


def denoiser_node(unet_config: dict[str, Any], scheduler: Any) -> dict[str, Any]:
    """The ``denoiser`` config node (plain data) of a UNet2DModel config and a scheduler."""
    public = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in unet_config.items()
        if not key.startswith("_")  # diffusers' bookkeeping (_class_name, _diffusers_version, ...)
    }
    return {
        "_target_": f"{__name__}.build", "fit": "sgd", "conditioning": "conditioned", "unet_config": public,
        **scheduler_settings(scheduler),
    }


def from_diffusers(unet: nn.Module, scheduler: Any) -> AdoptedUNet:
    """``unet`` itself (its weights, dtype and device) as our denoiser at ``scheduler``'s timesteps."""
    check_unet_config(unet.config, image_shape(unet.config))
    settings = scheduler_settings(scheduler)
    limit = Limit.of(settings)
    return AdoptedUNet(unet, settings["prediction_type"], settings["timesteps"], settings["levels"], limit).eval()
