"""Any dataset saved as an ``.npz`` file with an array ``x`` of shape (N, ...), used as is."""

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_diff.data.base import TensorDataModule
from lightning_diff.errors import UserError
from lightning_diff.seeding import generator


class NpzDataModule(TensorDataModule):
    """Rows of ``x`` are samples: images in [-1, 1] (set ``is_image``) or any real vectors.

    ``num_val`` rows, chosen with the seed, are held out for the validation loss; with
    ``num_train`` the training set is a seeded subset of the rest.
    """

    def __init__(
        self,
        path: str,
        key: str = "x",
        num_train: int | None = None,
        num_val: int = 0,
        is_image: bool = False,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, is_image=is_image)
        self.path = path
        self.key = key
        self.num_train = num_train
        self.num_val = num_val

    def _read(self) -> Tensor:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise UserError(f"data.path={self.path}: no such file; point data.path at an .npz holding array '{self.key}'")
        try:
            with np.load(path, allow_pickle=False) as archive:
                if self.key not in archive.files:
                    raise UserError(
                        f"{path} has no array '{self.key}' (it has: {', '.join(archive.files) or 'nothing'}); "
                        f"save the data as np.savez(path, {self.key}=array) or set data.key"
                    )
                array = archive[self.key]
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            raise UserError(f"{path} is not a readable .npz file ({err}); write it with numpy.savez") from err
        if array.ndim < 2 or array.shape[0] < 2:
            raise UserError(f"{path}: array '{self.key}' has shape {array.shape}; need (N, ...) with N >= 2")
        if not np.issubdtype(array.dtype, np.number):
            raise UserError(f"{path}: array '{self.key}' has dtype {array.dtype}; need numbers")
        data = torch.from_numpy(np.asarray(array, dtype=np.float32))
        if not bool(torch.isfinite(data).all()):
            bad = int((~torch.isfinite(data)).flatten(1).any(dim=1).sum())
            raise UserError(f"{path}: array '{self.key}' has NaN or infinite values in {bad} rows; clean the data first")
        return data

    def build(self) -> tuple[Tensor, Tensor]:
        data = self._read()
        total = data.shape[0]
        order = torch.randperm(total, generator=generator(self.seed, 0x1F2))
        val_count = min(self.num_val, total - 1)
        rest = order[val_count:]
        if self.num_train is not None:
            if self.num_train > rest.numel():
                raise UserError(
                    f"data.num_train={self.num_train} exceeds the {rest.numel()} rows of {self.path} "
                    f"left after {val_count} validation rows"
                )
            rest = rest[: self.num_train]
        train = data[rest.sort().values]
        # With no held-out rows the validation loss is measured on (a copy of) the training set.
        val = data[order[:val_count]] if val_count else train[: min(1024, train.shape[0])]
        return train, val
