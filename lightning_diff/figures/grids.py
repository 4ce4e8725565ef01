"""Image grids of samples (and their nearest training images), as uint8 arrays (H, W, 3) ready
for W&B or a PNG file, or saved as one."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

# Small images are enlarged (nearest neighbour) to about this many pixels per side to be visible.
DISPLAY_SIDE = 64
_LABEL_HEIGHT = 14


def _display(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] to RGB in [0, 1], enlarged when small."""
    images = images.detach().float().cpu().clamp(-1, 1)
    scale = max(1, DISPLAY_SIDE // images.shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images + 1) / 2


def _to_uint8(grid: Tensor) -> np.ndarray:
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def sample_grid(images: Tensor, nrow: int = 8) -> np.ndarray:
    """A grid of (B, C, H, W) images in [-1, 1]."""
    return _to_uint8(make_grid(_display(images), nrow=nrow, padding=2, pad_value=1.0))


def nearest_grid(samples: Tensor, nearest: Tensor, distances: Tensor, pairs_per_row: int = 4) -> np.ndarray:
    """Each sample beside its nearest training image, with the distance d1 written under the pair."""
    left, right = _display(samples), _display(nearest)
    tiles = []
    font = ImageFont.load_default()
    for sample, neighbour, distance in zip(left, right, distances.tolist()):
        pair = _to_uint8(make_grid(torch.stack([sample, neighbour]), nrow=2, padding=2, pad_value=1.0))
        canvas = Image.new("RGB", (pair.shape[1], pair.shape[0] + _LABEL_HEIGHT), "white")
        canvas.paste(Image.fromarray(pair), (0, 0))
        ImageDraw.Draw(canvas).text((3, pair.shape[0]), f"d1={distance:.3f}", fill="black", font=font)
        tiles.append(torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255)
    grid = make_grid(torch.stack(tiles), nrow=pairs_per_row, padding=6, pad_value=1.0)
    return _to_uint8(grid)


def difference_grid(reference: Tensor, other: Tensor, rows: int = 8) -> np.ndarray:
    """The first ``rows`` sample pairs from the same noise, one per row: reference | other |
    |reference - other| (black: equal, white: 2, the largest difference of images in [-1, 1])."""
    a, b = reference[:rows].float(), other[:rows].float()
    triples = [image for pair in zip(a, b, (a - b).abs() - 1) for image in pair]
    return _to_uint8(make_grid(_display(torch.stack(triples)), nrow=3, padding=2, pad_value=1.0))


# The study figure (python -m lightning_diff.report): a strip of row labels, then the pairs.
LABEL_WIDTH = 180
PAIR_PADDING = 1
PADDING = 6


def display_side(side: int) -> int:
    """The side, in pixels, an image of ``side`` pixels is drawn at."""
    return side * max(1, DISPLAY_SIDE // side)


def study_grid(labels: list[str], samples: list[Tensor], nearest: list[Tensor]) -> np.ndarray:
    """One row per run, labelled on the left: its samples (C, ch, H, W) in [-1, 1] from the same
    seeds in every row, each beside its nearest training image in a grey frame.

    Size: height R (D + 2 PAIR_PADDING + PADDING) + PADDING, width LABEL_WIDTH +
    C (2 D + 3 PAIR_PADDING + PADDING) + PADDING, with D = :func:`display_side` of the images.
    """
    pairs = []
    for row_samples, row_nearest in zip(samples, nearest):
        for sample, neighbour in zip(_display(row_samples), _display(row_nearest)):
            pairs.append(make_grid(torch.stack([sample, neighbour]), nrow=2, padding=PAIR_PADDING, pad_value=0.5))
    columns = samples[0].shape[0]
    grid = Image.fromarray(_to_uint8(make_grid(torch.stack(pairs), nrow=columns, padding=PADDING, pad_value=1.0)))
    canvas = Image.new("RGB", (LABEL_WIDTH + grid.width, grid.height), "white")
    canvas.paste(grid, (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    row_height = pairs[0].shape[1] + PADDING
    for row, label in enumerate(labels):
        draw.multiline_text((4, PADDING + row * row_height + 2), label, fill="black", font=font)
    return np.array(canvas)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid (enlarged so small images are visible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample_grid(images, nrow=nrow)).save(path)
    return path
