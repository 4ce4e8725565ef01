"""Image grids of samples, for people to look at."""

from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import save_image


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid (upscaled so small images are visible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images.detach().float().clamp(-1, 1)
    scale = max(1, 64 // images.shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    save_image((images + 1) / 2, path, nrow=nrow, padding=2, pad_value=1.0)
    return path
