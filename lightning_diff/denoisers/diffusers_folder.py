"""A diffusers model saved with ``save_pretrained``, read from local files only.

Two layouts are read:

```
pipeline folder (DDPMPipeline, DDIMPipeline)     UNet folder, plus scheduler=DIR_OR_FILE
  model_index.json                                  config.json  (_class_name UNet2DModel)
  unet/config.json + weights                        diffusion_pytorch_model.safetensors (or .bin)
  scheduler/scheduler_config.json
```

The scheduler is the class its config names, built with ``from_config`` and set to K inference
steps. Weights are read with diffusers' own loader, which opens ``.bin`` files with
``torch.load(weights_only=True)``, so a file from someone else cannot run code. Each way a folder
can fail to be such a model is one :class:`UserError` naming the file.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_diff.denoisers.diffusers_unet import diffusers_module
from lightning_diff.errors import UserError

SCHEDULER_CONFIG = "scheduler_config.json"
EXPECTED = (
    "give a folder written by save_pretrained: a pipeline (model_index.json, unet/, scheduler/) or a UNet2DModel "
    "(config.json and its weights) with scheduler=DIR_OR_FILE"
)


@dataclass
class DiffusersModel:
    """A UNet2DModel with its weights and its scheduler at K inference steps, and where each came from."""

    unet: Any
    scheduler: Any
    unet_folder: Path
    scheduler_file: Path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or one error naming the file."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable JSON file ({err}); {EXPECTED}") from err
    if not isinstance(content, dict):
        raise UserError(f"{path} holds no JSON object; {EXPECTED}")
    return content


def locate(folder: Path, scheduler: str | Path | None) -> tuple[Path, Path]:
    """The UNet's folder and the scheduler's config file of ``folder`` (``scheduler`` overrides a pipeline's own)."""
    if not folder.is_dir():
        raise UserError(f"path={folder}: no such folder; {EXPECTED}")
    own = None
    if (folder / "model_index.json").is_file():
        entry = read_json(folder / "model_index.json").get("unet")
        if not (isinstance(entry, list) and entry[-1:] == ["UNet2DModel"]):
            raise UserError(
                f"path={folder} is a pipeline whose unet is {entry}; lightning_diff adopts pipelines of an "
                "unconditional UNet2DModel (DDPMPipeline, DDIMPipeline)"
            )
        unet_folder, own = folder / "unet", folder / "scheduler"
    elif (folder / "config.json").is_file():
        unet_folder = folder
    else:
        raise UserError(f"path={folder} is not a saved diffusers model (no model_index.json, config.json); {EXPECTED}")
    chosen = Path(scheduler).expanduser() if scheduler is not None else own
    if chosen is None:
        raise UserError(
            f"path={folder} is a UNet2DModel folder, which holds no scheduler; add scheduler=DIR_OR_FILE "
            f"(a {SCHEDULER_CONFIG}, or the folder holding it, e.g. the scheduler/ folder of its pipeline)"
        )
    found = chosen / SCHEDULER_CONFIG if chosen.is_dir() else chosen
    if not found.is_file():
        raise UserError(f"scheduler={chosen}: no scheduler config there; give a {SCHEDULER_CONFIG} or its folder")
    return unet_folder, found


def read_scheduler(path: Path, num_inference_steps: int) -> Any:
    """The scheduler ``path`` configures, with its timesteps set for ``num_inference_steps``."""
    diffusers = diffusers_module()
    config = read_json(path)
    name = str(config.get("_class_name"))
    kind = getattr(diffusers, name, None)
    if not (isinstance(kind, type) and issubclass(kind, diffusers.SchedulerMixin)):
        raise UserError(f"{path} names no diffusers scheduler (_class_name={name}); give a scheduler's config file")
    try:
        scheduler = kind.from_config(config)
    except Exception as err:  # a scheduler's own checks raise any type (ValueError, NotImplementedError, ...)
        raise UserError(f"{path}: diffusers could not build its {name} ({type(err).__name__}: {err})") from err
    total = scheduler.config.get("num_train_timesteps")
    if isinstance(total, int) and num_inference_steps > total:
        raise UserError(
            f"num_inference_steps={num_inference_steps} is more than the {total} timesteps the {name} was trained "
            f"with; choose at most {total}"
        )
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def read_unet(folder: Path) -> Any:
    """The UNet2DModel saved in ``folder``, with its weights, in eval mode."""
    name = read_json(folder / "config.json").get("_class_name") if (folder / "config.json").is_file() else None
    if name != "UNet2DModel":
        what = f"a {name}" if name else "no config.json"
        raise UserError(f"{folder} holds {what}, not a UNet2DModel; lightning_diff adopts unconditional UNet2DModels")
    try:
        # low_cpu_mem_usage would want accelerate, and says so on every load when it is missing.
        unet = diffusers_module().UNet2DModel.from_pretrained(
            str(folder), local_files_only=True, low_cpu_mem_usage=False
        )
    except Exception as err:  # diffusers and safetensors raise their own types for missing or corrupt files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not read the UNet2DModel weights in {folder} ({first}); save the model again") from err
    return unet.eval()


def read_model(path: str | Path, scheduler: str | Path | None = None, num_inference_steps: int = 50) -> DiffusersModel:
    """The diffusers model saved at ``path`` (see the module docstring), its scheduler at K steps."""
    unet_folder, scheduler_file = locate(Path(path).expanduser(), scheduler)
    schedule = read_scheduler(scheduler_file, num_inference_steps)
    return DiffusersModel(read_unet(unet_folder), schedule, unet_folder, scheduler_file)
