"""Image datasets as in-memory tensors (N, C, H, W) in [-1, 1], with seeded training subsets.

A source only says how to read its raw uint8 images (:class:`RawImages`, one per split);
:class:`ImageDataModule` does everything else once, for all sources:

- the training subset: the first ``num_train`` images of one seeded permutation of the
  training split, so the same (N, seed) always names the same images and a larger N only adds;
- ``split``: ``half_a`` / ``half_b`` are two disjoint halves of that subset which together
  make it (two models trained on them give the two-model memorization test);
- validation images: a seeded choice from the test split when the dataset has one, else from
  images the training subset can never contain (the tail of the same permutation);
- channels (grey <-> RGB) and size (antialiased resize of the shorter side, centre crop).
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.datasets import CIFAR10, CelebA
from torchvision.datasets.folder import IMG_EXTENSIONS

from lightning_diff.data.base import TensorDataModule
from lightning_diff.data.idx import read_idx
from lightning_diff.errors import UserError
from lightning_diff.seeding import generator, seeded_subset

SPLITS = ("full", "half_a", "half_b")
CHANNELS = (1, 3)
# ITU-R BT.601 luma weights, the ones PIL's RGB -> "L" conversion uses.
LUMINANCE = (0.299, 0.587, 0.114)
GREY_MODES = ("1", "L", "LA")
# Images decoded and converted together: bounds the memory spent on full-size raw pixels.
CHUNK = 2048
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_SUBSET_STREAM = 0x5B5E7
_TEST_STREAM = 0x7E57
_REFERENCE_STREAM = 0x4EF


class RawImages:
    """The uint8 images of one split, each (H, W, C), read by index when taken.

    Attributes:
        max_value: the pixel value meaning full intensity (255 for 8-bit images).
    """

    max_value: int = 255

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, indices: list[int]) -> list[np.ndarray]:
        """The images at ``indices``, each (H, W, C) uint8."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """How error messages refer to image ``index``."""
        raise NotImplementedError


class ArrayImages(RawImages):
    """Images already in memory as one (N, H, W) or (N, H, W, C) uint8 array."""

    def __init__(self, array: np.ndarray, label: str, max_value: int = 255) -> None:
        self.array = array if array.ndim == 4 else array[..., None]
        self.label = label
        self.max_value = max_value

    def __len__(self) -> int:
        return self.array.shape[0]

    def take(self, indices: list[int]) -> list[np.ndarray]:
        return list(self.array[indices])

    def name(self, index: int) -> str:
        return f"{self.label} image #{index}"


class FileImages(RawImages):
    """Image files, decoded with PIL only when taken (a subset never reads the other files)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, indices: list[int]) -> list[np.ndarray]:
        return [read_image_file(self.paths[index]) for index in indices]

    def name(self, index: int) -> str:
        return str(self.paths[index])


def read_image_file(path: Path) -> np.ndarray:
    """The pixels of one image file as (H, W, 1) for grey files, else (H, W, 3) RGB; uint8."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"))
    # PIL reports broken files as OSError, some decoders as SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(
            f"cannot read image file {path} ({err}); it is truncated or not an image: replace or delete it"
        ) from err
    return pixels if pixels.ndim == 3 else pixels[..., None]


def convert_channels(images: Tensor, channels: int | None) -> Tensor:
    """(B, C, H, W) with C in {1, 3} to ``channels`` (grey is repeated; RGB becomes its luminance)."""
    if channels is None or images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    weights = torch.tensor(LUMINANCE, dtype=images.dtype).reshape(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def resize_and_crop(images: Tensor, size: int) -> Tensor:
    """(B, C, H, W) with the shorter side resized to ``size`` (antialiased bilinear), centre-cropped square."""
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_height, new_width) != (height, width):
        images = F.interpolate(
            images, size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return images[..., top : top + size, left : left + size]


def to_model_range(
    pixels: Tensor, max_value: int, channels: int | None = None, image_size: int | None = None
) -> Tensor:
    """uint8 (B, H, W, C) pixels to float32 (B, C', H', W') in [-1, 1] with the channels and size asked for."""
    images = convert_channels(pixels.permute(0, 3, 1, 2).float().div_(max_value), channels)
    if image_size is not None:
        images = resize_and_crop(images, image_size)
    # Resampling weights are convex, so only float rounding can step outside [-1, 1].
    return (images * 2 - 1).clamp_(-1, 1)


class ImageDataModule(TensorDataModule):
    """Images (N, C, H, W) in [-1, 1]; subclasses implement :meth:`train_images` (and :meth:`test_images`).

    Args:
        image_size: side of the square images after resizing the shorter side and centre-cropping;
            null keeps the native size.
        channels: 1 (grey) or 3 (RGB); null keeps the dataset's own.
        num_train: training-set size N (null: every image not held out for validation).
        num_val: validation images, from the test split when there is one, else held out.
        split: ``full`` (all N), ``half_a`` (the first N // 2) or ``half_b`` (the other N - N // 2).
        batch_size: the global batch size.
        seed: picks the training subset and the validation images, and orders the batches.
    """

    title = "images"

    def __init__(
        self,
        image_size: int | None = None,
        channels: int | None = None,
        num_train: int | None = None,
        num_val: int = 500,
        split: str = "full",
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, is_image=True)
        if image_size is not None and image_size < 1:
            raise UserError(f"data.image_size={image_size} must be >= 1, or null for the native size")
        if channels is not None and channels not in CHANNELS:
            raise UserError(f"data.channels={channels} is not valid; use 1 (grey), 3 (RGB) or null (the dataset's own)")
        if split not in SPLITS:
            raise UserError(f"data.split={split!r} is not valid; use one of {', '.join(SPLITS)}")
        if num_train is not None and num_train < (1 if split == "full" else 2):
            raise UserError(
                f"data.num_train={num_train} is too small for data.split={split}; "
                f"need >= {1 if split == 'full' else 2}, or null for all images"
            )
        if num_val < 1:
            raise UserError(f"data.num_val={num_val} must be >= 1 (validation images for the per-level loss)")
        self.image_size = image_size
        self.channels = channels
        self.num_train = num_train
        self.num_val = num_val
        self.split = split

    def train_images(self) -> RawImages:
        """The dataset's training split (or all of it, when it has no test split)."""
        raise NotImplementedError

    def test_images(self) -> RawImages | None:
        """The dataset's test split, or None when it has none."""
        return None

    def select(self, train_count: int, test_count: int | None) -> tuple[Tensor, Tensor]:
        """Sorted indices of the training images (into the training split) and of the validation images.

        Validation indices point into the test split when ``test_count`` is given, else into the
        training split, disjoint from every training subset this seed can pick.
        """
        order = torch.randperm(train_count, generator=generator(self.seed, _SUBSET_STREAM))
        held_out = ""
        if test_count is None:
            if self.num_val >= train_count:
                raise UserError(
                    f"data.num_val={self.num_val} leaves no training images of the {train_count} in {self.title}; "
                    f"lower data.num_val"
                )
            available, val = order[: train_count - self.num_val], order[train_count - self.num_val :]
            held_out = f" ({train_count} minus data.num_val={self.num_val} held out for validation)"
        else:
            if self.num_val > test_count:
                raise UserError(
                    f"data.num_val={self.num_val} exceeds the {test_count} images of the {self.title} test split; "
                    f"lower data.num_val"
                )
            available = order
            val = torch.randperm(test_count, generator=generator(self.seed, _TEST_STREAM))[: self.num_val]
        count = available.numel() if self.num_train is None else self.num_train
        if count > available.numel():
            raise UserError(
                f"data.num_train={count} exceeds the {available.numel()} training images of {self.title}{held_out}; "
                f"lower data.num_train or set it to null for all of them"
            )
        subset = available[:count]
        if self.split == "half_a":
            subset = subset[: count // 2]
        elif self.split == "half_b":
            subset = subset[count // 2 :]
        return subset.sort().values, val.sort().values

    def convert(self, raw: RawImages, indices: Tensor) -> Tensor:
        """The images ``indices`` of ``raw`` as (n, C, H, W) float32 in [-1, 1], converted chunk by chunk."""
        result: Tensor | None = None
        first_index = 0  # the image whose converted shape every other image must match
        for start in range(0, indices.numel(), CHUNK):
            chunk = indices[start : start + CHUNK]
            images = raw.take(chunk.tolist())
            # Files may differ in size or channels: convert the images of each raw shape as one batch.
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for position, image in enumerate(images):
                by_shape.setdefault(image.shape, []).append(start + position)
            for rows in by_shape.values():
                pixels = torch.from_numpy(np.stack([images[row - start] for row in rows]))
                batch = to_model_range(pixels, raw.max_value, self.channels, self.image_size)
                if result is None:
                    result, first_index = torch.empty(indices.numel(), *batch.shape[1:]), int(chunk[0])
                if batch.shape[1:] != result.shape[1:]:
                    raise UserError(
                        f"{self.title}: images differ in shape: {raw.name(first_index)} becomes "
                        f"{tuple(result.shape[1:])} but {raw.name(int(indices[rows[0]]))} becomes "
                        f"{tuple(batch.shape[1:])} (C, H, W); set data.image_size (and data.channels) so that "
                        f"every image gets one shape"
                    )
                result[rows] = batch
        assert result is not None, "select() never returns an empty set of indices"
        return result

    def test_subset(self, count: int | None, seed: int) -> Tensor | None:
        """A seeded choice of ``count`` test-split images (all with None; at most all), converted like
        the training images; None when the dataset has no test split. No run trains on these."""
        raw = self.test_images()
        if raw is None:
            return None
        return self.convert(raw, seeded_subset(len(raw), count, seed, _REFERENCE_STREAM))

    def build(self) -> tuple[Tensor, Tensor]:
        train_raw, test_raw = self.train_images(), self.test_images()
        train_idx, val_idx = self.select(len(train_raw), None if test_raw is None else len(test_raw))
        val_raw = train_raw if test_raw is None else test_raw
        return self.convert(train_raw, train_idx), self.convert(val_raw, val_idx)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 1797 handwritten digits: grey 8x8, values 0..16, shipped inside scikit-learn."""

    title = "digits"

    def train_images(self) -> RawImages:
        # Imported here: scikit-learn is slow to import and only this source needs it.
        from sklearn.datasets import load_digits

        return ArrayImages(load_digits().images.astype(np.uint8), "digits", max_value=16)


class IdxDataModule(ImageDataModule):
    """MNIST-style IDX files ``{train,t10k}-images-idx3-ubyte`` (or ``.gz``) in one folder."""

    def folder(self) -> Path:
        """The folder holding the IDX files."""
        raise NotImplementedError

    def fetch_hint(self) -> str:
        """How a user gets the files."""
        raise NotImplementedError

    def read_images(self, prefix: str) -> ArrayImages:
        stem = f"{prefix}-images-idx3-ubyte"
        candidates = [self.folder() / stem, self.folder() / f"{stem}.gz"]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            tried = " and ".join(str(candidate) for candidate in candidates)
            raise UserError(f"{self.title} not found: tried {tried}; {self.fetch_hint()}")
        images = read_idx(path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise UserError(
                f"{path} holds a {images.dtype} array of shape {images.shape}; an IDX image file holds "
                f"uint8 images (N, H, W); check that this is the images file, not the labels"
            )
        return ArrayImages(images, path.name)

    def train_images(self) -> RawImages:
        return self.read_images("train")

    def test_images(self) -> RawImages:
        return self.read_images("t10k")


class FashionMNISTDataModule(IdxDataModule):
    """Fashion-MNIST (60k + 10k grey 28x28): Debian's ``dataset-fashion-mnist`` files by default,
    or ``<root>/FashionMNIST/raw/`` of a torchvision data root."""

    title = "Fashion-MNIST"

    def __init__(self, root: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.root = root

    def folder(self) -> Path:
        return DEBIAN_FASHION_MNIST if self.root is None else Path(self.root).expanduser() / "FashionMNIST" / "raw"

    def fetch_hint(self) -> str:
        if self.root is None:
            return (
                "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set data.root to a "
                "torchvision data root holding FashionMNIST/raw/"
            )
        return (
            f"fetch it on a machine with network with "
            f"`torchvision.datasets.FashionMNIST({self.root!r}, download=True)` "
            f"and copy {self.root}, or set data.root=null to use Debian's dataset-fashion-mnist package"
        )


class MNISTDataModule(IdxDataModule):
    """MNIST (60k + 10k grey 28x28) from ``<root>/MNIST/raw/`` of a torchvision data root."""

    title = "MNIST"

    def __init__(self, root: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if root is None:
            raise UserError(
                "data.root is required for MNIST: the torchvision data root holding MNIST/raw/ (fetch it with "
                "`torchvision.datasets.MNIST(root, download=True)` on a machine with network)"
            )
        self.root = root

    def folder(self) -> Path:
        return Path(self.root).expanduser() / "MNIST" / "raw"

    def fetch_hint(self) -> str:
        return (
            f"fetch it on a machine with network with `torchvision.datasets.MNIST({self.root!r}, download=True)` "
            f"and copy {self.root} here"
        )


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50k + 10k RGB 32x32) from ``<root>/cifar-10-batches-py`` via torchvision."""

    title = "CIFAR-10"

    def __init__(self, root: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if root is None:
            raise UserError(
                "data.root is required for CIFAR-10: the torchvision data root holding cifar-10-batches-py/ "
                "(fetch it with `torchvision.datasets.CIFAR10(root, download=True)` on a machine with network)"
            )
        self.root = root

    def load(self, train: bool) -> ArrayImages:
        root = Path(self.root).expanduser()
        folder = root / CIFAR10.base_folder
        hint = f"`torchvision.datasets.CIFAR10({self.root!r}, download=True)` on a machine with network"
        if not folder.is_dir():
            raise UserError(f"CIFAR-10 not found: tried {folder}; fetch it with {hint} and copy {self.root} here")
        try:
            dataset = CIFAR10(str(root), train=train, download=False)
        except RuntimeError as err:
            raise UserError(
                f"{folder} is incomplete or corrupted (torchvision: {err}); delete it and fetch it again with {hint}"
            ) from err
        return ArrayImages(dataset.data, f"CIFAR-10 {'train' if train else 'test'}")

    def train_images(self) -> RawImages:
        return self.load(train=True)

    def test_images(self) -> RawImages:
        return self.load(train=False)


class CelebADataModule(ImageDataModule):
    """CelebA aligned faces (RGB 178x218; train split 162,770, test 19,962) from ``<root>/celeba`` via
    torchvision; set ``image_size`` (e.g. 64) to get square images."""

    title = "CelebA"

    def __init__(self, root: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if root is None:
            raise UserError(
                "data.root is required for CelebA: the torchvision data root holding celeba/ (fetch it with "
                "`torchvision.datasets.CelebA(root, download=True)` on a machine with network)"
            )
        self.root = root

    def load(self, split: str) -> FileImages:
        root = Path(self.root).expanduser()
        folder = root / CelebA.base_folder
        hint = f"`torchvision.datasets.CelebA({self.root!r}, download=True)` on a machine with network (needs gdown)"
        if not folder.is_dir():
            raise UserError(f"CelebA not found: tried {folder}; fetch it with {hint} and copy {self.root} here")
        try:
            dataset = CelebA(str(root), split=split, target_type=[], download=False)
        except RuntimeError as err:
            raise UserError(
                f"{folder} is incomplete or corrupted (torchvision: {err}); it needs img_align_celeba/ and the "
                f"list_*.txt / identity_CelebA.txt files: fetch it again with {hint}"
            ) from err
        return FileImages([folder / "img_align_celeba" / name for name in dataset.filename])

    def train_images(self) -> RawImages:
        return self.load("train")

    def test_images(self) -> RawImages:
        return self.load("test")


class ImageFolderDataModule(ImageDataModule):
    """Every image file under ``path`` (any depth, e.g. torchvision's ImageFolder class folders), in
    path order; there is no test split, so validation images are held out of the training pool."""

    title = "image folder"

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if path is None:
            raise UserError("data.path is required for an image folder: the folder holding the image files")
        self.path = path
        self.title = f"the image folder {path}"

    def train_images(self) -> RawImages:
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise UserError(f"data.path={self.path}: no such folder (tried {folder}); point it at a folder of images")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not paths:
            raise UserError(
                f"data.path={self.path} holds no image files (looked for {', '.join(IMG_EXTENSIONS)} at any depth)"
            )
        return FileImages(paths)


DATAMODULES: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "mnist": MNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "celeba": CelebADataModule,
    "image_folder": ImageFolderDataModule,
}
