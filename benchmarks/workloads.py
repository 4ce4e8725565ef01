"""The networks, data and objective the training benchmarks share, built one way for every arm."""

import copy
from functools import partial

import torch
from torch import Tensor, nn

from lightning_diff.data.base import TensorDataModule
from lightning_diff.denoisers import unet
from lightning_diff.diffusion.grids import NoiseGrid, make_grid
from lightning_diff.diffusion.objective import DiffusionObjective
from lightning_diff.module import OptimizerFactory

LEARNING_RATE = 1e-3


def images(count: int, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """``count`` random images in [-1, 1]: training speed does not depend on what they show."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((count, *shape), generator=gen) * 2 - 1


def unet_denoiser(
    shape: tuple[int, ...], grid: NoiseGrid, conditioning: str, num_blocks: int, base_channels: int, seed: int = 0
) -> nn.Module:
    """The paper's UNet (scaled by ``num_blocks`` / ``base_channels``) in a conditioning mode, seeded."""
    torch.manual_seed(seed)
    return unet.build(shape, grid, conditioning=conditioning, num_blocks=num_blocks, base_channels=base_channels)


def objective(grid: NoiseGrid, conditioning: str) -> DiffusionObjective:
    """What training uses by default: per-level networks see each batch at every level."""
    return DiffusionObjective(grid, assignment="every_level" if conditioning == "per_level" else "random")


def grid(num_levels: int) -> NoiseGrid:
    return make_grid(num_levels)


def adam() -> OptimizerFactory:
    """conf/optimizer/adam.yaml: Adam, lr 1e-3, the multi-tensor (foreach) update."""
    return partial(torch.optim.Adam, lr=LEARNING_RATE, foreach=True)


def twin(module: nn.Module) -> nn.Module:
    """An independent copy with the same initial weights, so both arms start equal."""
    return copy.deepcopy(module)


class InMemoryData(TensorDataModule):
    """A datamodule over a given tensor (validation: its first rows)."""

    def __init__(self, data: Tensor, batch_size: int) -> None:
        super().__init__(batch_size=batch_size, is_image=True)
        self.data = data

    def build(self) -> tuple[Tensor, Tensor]:
        return self.data, self.data[: min(64, self.data.shape[0])]
