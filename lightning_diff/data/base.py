"""In-memory datamodules whose batches are a pure function of (seed, step).

Every dataset here (synthetic vectors, N <= 10^5 images) fits in memory as one tensor, so a
datamodule materialises its training set once and each step's *global* batch is read off a
per-epoch permutation seeded by (seed, epoch). A run resumed at step s, or spread over W
ranks (rank r takes rows r*B/W .. (r+1)*B/W of the global batch), sees exactly the batches
an uninterrupted single-process run would.
"""

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lightning_diff.errors import UserError
from lightning_diff.seeding import generator


class StepBatches(IterableDataset):
    """Infinite stream of this rank's slice of the global batch, from step ``start_step()`` on."""

    def __init__(
        self,
        data: Tensor,
        global_batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        start_step: Callable[[], int],
    ) -> None:
        super().__init__()
        self.data = data
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step

    def global_indices(self, step: int) -> Tensor:
        """Training-set indices of the global batch of ``step`` (epochs without replacement)."""
        n, b = self.data.shape[0], self.global_batch_size
        positions = torch.arange(step * b, (step + 1) * b)
        epochs = positions // n
        out = torch.empty(b, dtype=torch.long)
        for epoch in torch.unique(epochs).tolist():
            perm = torch.randperm(n, generator=generator(self.seed, 0xDA7A, epoch))
            mask = epochs == epoch
            out[mask] = perm[positions[mask] % n]
        return out

    def __iter__(self) -> Iterator[Tensor]:
        step = self.start_step()
        local = self.global_batch_size // self.world_size
        while True:
            idx = self.global_indices(step)[self.rank * local : (self.rank + 1) * local]
            yield self.data[idx]
            step += 1


class TensorDataModule(L.LightningDataModule):
    """Base datamodule: subclasses implement :meth:`build` returning (train, val) tensors.

    Args:
        batch_size: the *global* batch size; under DDP each rank gets batch_size / world_size.
        seed: seeds the data order (and, in subclasses, sampling or subset selection).
        is_image: whether samples are images in [-1, 1] (clipped for display, fed to FID).
    """

    def __init__(self, batch_size: int = 256, seed: int = 0, is_image: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.is_image = is_image
        self._train: Tensor | None = None
        self._val: Tensor | None = None

    def build(self) -> tuple[Tensor, Tensor]:
        """Return (train, val) float32 tensors of shape (N, *data_shape)."""
        raise NotImplementedError

    def _materialise(self) -> None:
        if self._train is not None:
            return
        train, val = self.build()
        for name, tensor in (("training", train), ("validation", val)):
            if tensor.dim() < 2 or tensor.shape[0] == 0:
                raise UserError(f"{type(self).__name__}: the {name} set is empty or has no sample axis")
            if not bool(torch.isfinite(tensor).all()):
                raise UserError(f"{type(self).__name__}: the {name} set contains NaN or infinite values")
        self._train, self._val = train.float().contiguous(), val.float().contiguous()

    @property
    def train_data(self) -> Tensor:
        """The whole training set, (N, *data_shape)."""
        self._materialise()
        assert self._train is not None
        return self._train

    @property
    def val_data(self) -> Tensor:
        """Held-out samples for the per-level validation loss, (M, *data_shape)."""
        self._materialise()
        assert self._val is not None
        return self._val

    def test_subset(self, count: int | None, seed: int) -> Tensor | None:
        """``count`` images of the dataset's test split (seeded), or None: this data has none."""
        return None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train_data.shape[1:])

    def setup(self, stage: str | None = None) -> None:
        self._materialise()

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world_size = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        if self.batch_size % world_size:
            raise UserError(
                f"data.batch_size={self.batch_size} is the global batch and must divide by the world size "
                f"{world_size}; choose a multiple of {world_size}"
            )
        stream = StepBatches(
            self.train_data,
            self.batch_size,
            self.seed,
            rank,
            world_size,
            start_step=lambda: trainer.global_step if trainer is not None else 0,
        )
        return DataLoader(stream, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        # The whole validation set is one batch; the module computes a per-level loss on it.
        return DataLoader([self.val_data], batch_size=None, num_workers=0)
