"""The candidate patches of the equivariant local score machine at one patch size and position class.

The candidates are the size x size patches of every training image centred at each position
of a rectangle of centre rows x centre columns: the fully-inside positions for circular
padding, one class of positions with the same zero padding for ``padding=zeros``. Candidate k
is image k // (rows cols) at position k % (rows cols), row-major. They are never held all at
once: at full Fashion-MNIST with P = 5 there are 60,000 x 576 = 34.6M of them, 25 values each,
3.5 GB in float32 (P = 15: 11.8M x 225 values, 10.6 GB). :meth:`PatchSet.chunks` copies a few
images' patches at a time and :meth:`PatchSet.gather` any candidates by index, both through one
strided view of the (padded) images, so a set costs no memory of its own.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# Largest chunk of candidates (values) copied at once: 16 MB in float32.
CHUNK_ELEMENTS = 1 << 22
# Candidates whose second moments give the leading direction: a direction only orders the
# candidates (any unit vector keeps the posterior exact), so a sample of the set suffices.
DIRECTION_SAMPLE = 4096


@dataclass(frozen=True)
class SetStatistics:
    """What the posterior needs of a whole candidate set before streaming it: the mean patch (logits
    are formed around it), the largest distance from it (bounds the logits' rounding) and the range
    of the centre pixels per channel (bounds a posterior mean that misses some candidates)."""

    mean: Tensor  # (D,) float32
    largest_norm: float
    centre_low: Tensor  # (C,)
    centre_high: Tensor  # (C,)


class PatchSet:
    """Patches of ``images`` (N, C, H', W'): the patch centred on (row, col) of the original image
    starts at (row + shift, col + shift) of ``images``, which the caller has padded so that every
    candidate lies inside; ``rows`` and ``cols`` are the centre positions (contiguous ranges)."""

    def __init__(self, images: Tensor, size: int, rows: range, cols: range, shift: int) -> None:
        images = images.contiguous()
        channels = images.shape[1]
        self.images = images
        self.size = size
        self.channels = channels
        self.rows, self.cols = rows, cols
        self.dim = channels * size * size
        self.count = images.shape[0] * len(rows) * len(cols)
        n_stride, c_stride, h_stride, w_stride = images.stride()
        self.view = images.as_strided(
            (images.shape[0], len(rows), len(cols), channels, size, size),
            (n_stride, h_stride, w_stride, c_stride, h_stride, w_stride),
            images.storage_offset() + (rows.start + shift) * h_stride + (cols.start + shift) * w_stride,
        )

    def gather(self, index: Tensor) -> Tensor:
        """The candidates at ``index`` (k,) as rows (k, D)."""
        positions = len(self.rows) * len(self.cols)
        image, position = index // positions, index % positions
        return self.view[image, position // len(self.cols), position % len(self.cols)].reshape(-1, self.dim)

    def chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, Tensor]]:
        """(first candidate, rows (k, D)) over the whole set in order, whole images at a time."""
        per_image = len(self.rows) * len(self.cols)
        step = max(1, max_elements // (per_image * self.dim))
        for start in range(0, self.images.shape[0], step):
            yield start * per_image, self.view[start : start + step].reshape(-1, self.dim)

    def centres(self, patches: Tensor) -> Tensor:
        """The centre pixel (k, C) of each row of ``patches`` (k, D)."""
        half = self.size // 2
        return patches.reshape(-1, self.channels, self.size, self.size)[:, :, half, half]

    def statistics(self) -> SetStatistics:
        """Two passes over the set: its mean, then the distances from it."""
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.images.device)
        low = torch.full((self.channels,), float("inf"), device=self.images.device)
        high = torch.full((self.channels,), -float("inf"), device=self.images.device)
        for _, patches in self.chunks():
            total += patches.sum(dim=0, dtype=torch.float64)
            centres = self.centres(patches)
            low, high = torch.minimum(low, centres.amin(dim=0)), torch.maximum(high, centres.amax(dim=0))
        mean = (total / self.count).float()
        largest = max(float((patches - mean).pow(2).sum(dim=1).max()) for _, patches in self.chunks())
        return SetStatistics(mean, largest**0.5, low, high)

    def leading_direction(self, mean: Tensor) -> Tensor:
        """The unit (D,) direction of largest spread about ``mean`` of every k-th candidate (about
        ``DIRECTION_SAMPLE`` of them), the leading eigenvector of their second moments."""
        stride = max(1, self.count // DIRECTION_SAMPLE)
        moments = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.images.device)
        for first, patches in self.chunks():
            sampled = (patches[(-first) % stride :: stride] - mean).double()
            moments += sampled.T @ sampled
        direction = torch.linalg.eigh(moments).eigenvectors[:, -1]
        return (direction / direction.norm()).float()
