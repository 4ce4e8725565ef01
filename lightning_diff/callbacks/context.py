"""What a callback may know about the run it joins: one object handed to every callback
factory named in ``conf/callback/*.yaml`` (``_target_``), so the training entry point builds
all of them in one loop, in the order the config lists them."""

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from lightning_diff.module import DiffusionModule


class RunContext:
    """The run's config, data, module and checkpoint path, and the callbacks built so far (by name).

    A plain class on purpose: Hydra would turn a dataclass argument into a config node.
    """

    def __init__(self, cfg: DictConfig, datamodule: Any, module: DiffusionModule, checkpoint: Path) -> None:
        self.cfg = cfg
        self.datamodule = datamodule
        self.module = module
        self.checkpoint = checkpoint
        self.built: dict[str, L.Callback] = {}

    @property
    def trainable(self) -> bool:
        """Whether the denoiser is trained by SGD (closed-form families have no steps to act on)."""
        return self.module.denoiser.fit == "sgd"
