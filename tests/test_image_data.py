"""Image datamodules: shapes, value range, resizing, channels, seeded subsets and halves, error messages."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.celeba
import torchvision.datasets.cifar
from PIL import Image

from conftest import require_system
from lightning_diff.data import images as image_data
from lightning_diff.data.idx import read_idx
from lightning_diff.data.images import (
    DATAMODULES,
    CelebADataModule,
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    resize_and_crop,
)
from lightning_diff.errors import UserError


def fashion_available() -> None:
    require_system("fashion_mnist")


def assert_images(data: torch.Tensor, shape: tuple[int, ...], full_range: bool = True) -> None:
    assert data.dtype == torch.float32
    assert tuple(data.shape) == shape
    assert data.min() >= -1 and data.max() <= 1
    if full_range:  # real (and fake unresized) images use the whole range, not a sliver of it
        assert data.min() < -0.9 and data.max() > 0.9


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An IDX file of uint8 ``array``, written independently of the reader under test."""
    content = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    content += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)


def fake_pixels(count: int, height: int, width: int, channels: int | None, seed: int) -> np.ndarray:
    shape = (count, height, width) if channels is None else (count, height, width, channels)
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    pixels.reshape(count, -1)[:, 0] = 0  # every image spans the full range
    pixels.reshape(count, -1)[:, 1] = 255
    return pixels


def make_mnist_root(root: Path, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train, test = fake_pixels(40, 28, 28, None, seed=1), fake_pixels(12, 28, 28, None, seed=2)
    suffix = ".gz" if compress else ""
    write_idx(raw / f"train-images-idx3-ubyte{suffix}", train, compress)
    write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", test, compress)
    write_idx(raw / f"train-labels-idx1-ubyte{suffix}", np.zeros(40, np.uint8), compress)
    return train, test


def pretend_checksums_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake datasets cannot match torchvision's MD5 sums; accept any file that exists."""

    def exists(fpath: str, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.celeba, "check_integrity", exists)


def make_cifar_root(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py as torchvision reads it: pickled dicts with rows of 3072 bytes (R, G, B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [fake_pixels(6, 32, 32, 3, seed=10 + i) for i in range(5)]
    test = fake_pixels(8, 32, 32, 3, seed=20)
    for name, pixels in [*((f"data_batch_{i + 1}", b) for i, b in enumerate(batches)), ("test_batch", test)]:
        rows = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": rows, "labels": [0] * len(pixels)}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return np.concatenate(batches), test


def write_pngs(folder: Path, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


# ---------------------------------------------------------------------------------------------
# sources


def test_registry_names_every_source() -> None:
    assert set(DATAMODULES) == {"digits", "fashion_mnist", "mnist", "cifar10", "celeba", "image_folder"}
    assert all(issubclass(cls, image_data.ImageDataModule) for cls in DATAMODULES.values())


def test_digits_native_values_and_shapes() -> None:
    data = DigitsDataModule(num_val=297)
    assert data.is_image
    assert_images(data.train_data, (1500, 1, 8, 8))
    assert_images(data.val_data, (297, 1, 8, 8))
    # Values 0..16 map exactly onto the 17 levels v / 8 - 1.
    levels = (data.train_data + 1) * 8
    assert torch.equal(levels, levels.round())
    # Validation images are held out of the training pool: no (index) overlap.
    train_idx, val_idx = data.select(1797, None)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())


def test_digits_resize_8_to_16_and_grey_to_rgb() -> None:
    data = DigitsDataModule(image_size=16, channels=3, num_train=100, num_val=20)
    assert_images(data.train_data, (100, 3, 16, 16))
    assert torch.equal(data.train_data[:, 0], data.train_data[:, 2])
    native = DigitsDataModule(num_train=100, num_val=20).train_data
    # Upsampling keeps the image: averaging 2x2 blocks gives back roughly the native pixels.
    pooled = torch.nn.functional.avg_pool2d(data.train_data[:, :1], 2)
    assert (pooled - native).abs().mean() < 0.15


def test_train_dataloader_without_trainer() -> None:
    data = DigitsDataModule(num_train=50, num_val=10, batch_size=16)
    batches = iter(data.train_dataloader())
    first, second = next(batches), next(batches)
    assert first.shape == (16, 1, 8, 8) and second.shape == (16, 1, 8, 8)
    assert not torch.equal(first, second)
    assert next(iter(data.val_dataloader())).shape == (10, 1, 8, 8)


def test_fashion_mnist_real_files() -> None:
    fashion_available()
    data = FashionMNISTDataModule(num_train=1000, num_val=200)
    assert_images(data.train_data, (1000, 1, 28, 28))
    assert_images(data.val_data, (200, 1, 28, 28))
    # Validation comes from the t10k split: its images are not training images.
    assert not torch.equal(data.val_data[:5], data.train_data[:5])


def test_fashion_mnist_resize_28_to_16_and_rgb() -> None:
    fashion_available()
    data = FashionMNISTDataModule(num_train=200, num_val=50, image_size=16, channels=3)
    assert_images(data.train_data, (200, 3, 16, 16))
    native = FashionMNISTDataModule(num_train=200, num_val=50).train_data
    # A resize keeps the brightness of each image.
    assert torch.allclose(data.train_data.mean(dim=(1, 2, 3)), native.mean(dim=(1, 2, 3)), atol=0.03)


def test_fashion_mnist_subsets_and_halves() -> None:
    fashion_available()
    options = dict(num_train=1000, num_val=100)
    full = FashionMNISTDataModule(seed=0, **options)
    assert torch.equal(full.train_data, FashionMNISTDataModule(seed=0, **options).train_data)
    assert not torch.equal(full.train_data, FashionMNISTDataModule(seed=1, **options).train_data)
    half_a = FashionMNISTDataModule(seed=0, split="half_a", **options)
    half_b = FashionMNISTDataModule(seed=0, split="half_b", **options)
    assert half_a.train_data.shape[0] == half_b.train_data.shape[0] == 500
    idx_full, val_full = full.select(60_000, 10_000)
    idx_a, val_a = half_a.select(60_000, 10_000)
    idx_b, _ = half_b.select(60_000, 10_000)
    assert not set(idx_a.tolist()) & set(idx_b.tolist())
    assert torch.equal(torch.cat([idx_a, idx_b]).sort().values, idx_full)
    assert torch.equal(val_a, val_full)
    # The images agree with the indices: the two halves, put in index order, are the full subset.
    merged = torch.cat([half_a.train_data, half_b.train_data])[torch.cat([idx_a, idx_b]).argsort()]
    assert torch.equal(merged, full.train_data)
    # Subsets are nested: a larger N only adds images.
    larger, _ = FashionMNISTDataModule(seed=0, num_train=2000, num_val=100).select(60_000, 10_000)
    assert set(idx_full.tolist()) <= set(larger.tolist())


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_fake_idx_root(tmp_path: Path, compress: bool) -> None:
    train, test = make_mnist_root(tmp_path, compress)
    data = MNISTDataModule(root=str(tmp_path), num_val=12)
    assert_images(data.train_data, (40, 1, 28, 28))
    expected = torch.from_numpy(train).float().div(255).mul(2).sub(1).unsqueeze(1)
    assert torch.allclose(data.train_data, expected, atol=1e-6)
    expected_val = torch.from_numpy(test).float().div(255).mul(2).sub(1).unsqueeze(1)
    assert torch.allclose(data.val_data, expected_val, atol=1e-6)
    small = MNISTDataModule(root=str(tmp_path), num_train=10, num_val=3, image_size=16)
    assert_images(small.train_data, (10, 1, 16, 16), full_range=False)  # shrunk noise averages out


def test_fashion_mnist_from_torchvision_root(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte.gz", fake_pixels(20, 28, 28, None, seed=3), compress=True)
    write_idx(raw / "t10k-images-idx3-ubyte", fake_pixels(5, 28, 28, None, seed=4), compress=False)
    assert_images(FashionMNISTDataModule(root=str(tmp_path), num_val=5).train_data, (20, 1, 28, 28))


def test_cifar10_from_fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_checksums_match(monkeypatch)
    train, test = make_cifar_root(tmp_path)
    data = CIFAR10DataModule(root=str(tmp_path), num_val=8)
    assert_images(data.train_data, (30, 3, 32, 32))
    expected = torch.from_numpy(train).permute(0, 3, 1, 2).float().div(255).mul(2).sub(1)
    assert torch.allclose(data.train_data, expected, atol=1e-6)
    assert torch.allclose(data.val_data, torch.from_numpy(test).permute(0, 3, 1, 2).float().div(255) * 2 - 1)
    grey = CIFAR10DataModule(root=str(tmp_path), num_train=10, num_val=2, channels=1, image_size=16)
    assert_images(grey.train_data, (10, 1, 16, 16), full_range=False)


def test_celeba_from_fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_checksums_match(monkeypatch)
    folder = tmp_path / "celeba"
    names = [f"{i:06d}.jpg" for i in range(1, 10)]
    partition = [0] * 5 + [1] * 2 + [2] * 2
    write_pngs(folder / "img_align_celeba", fake_pixels(9, 22, 18, 3, seed=5))
    for i, name in enumerate(names):  # torchvision opens by file name; store JPEG as CelebA does
        Image.open(folder / "img_align_celeba" / f"{i:03d}.png").save(folder / "img_align_celeba" / name, "JPEG")
    lines = {
        "list_eval_partition.txt": [f"{n} {p}" for n, p in zip(names, partition)],
        "identity_CelebA.txt": [f"{n} 1" for n in names],
        "list_bbox_celeba.txt": ["9", "image_id x_1 y_1 width height", *(f"{n} 1 2 3 4" for n in names)],
        "list_landmarks_align_celeba.txt": ["9", "lefteye_x lefteye_y", *(f"{n} 1 2" for n in names)],
        "list_attr_celeba.txt": ["9", "Smiling Young", *(f"{n} 1 -1" for n in names)],
    }
    for file_name, rows in lines.items():
        (folder / file_name).write_text("\n".join(rows) + "\n")
    data = CelebADataModule(root=str(tmp_path), num_val=2, image_size=8)
    assert tuple(data.train_data.shape) == (5, 3, 8, 8)
    assert tuple(data.val_data.shape) == (2, 3, 8, 8)
    assert data.train_data.min() >= -1 and data.train_data.max() <= 1
    native = CelebADataModule(root=str(tmp_path), num_val=2)
    assert tuple(native.train_data.shape) == (5, 3, 22, 18)


def test_image_folder_pngs_with_classes_and_sizes(tmp_path: Path) -> None:
    write_pngs(tmp_path / "cats", fake_pixels(6, 12, 12, 3, seed=6))
    write_pngs(tmp_path / "dogs", fake_pixels(6, 20, 16, 3, seed=7))
    write_pngs(tmp_path / "grey", fake_pixels(3, 12, 12, None, seed=8))
    data = ImageFolderDataModule(path=str(tmp_path), num_val=3, image_size=8, channels=3)
    assert_images(data.train_data, (12, 3, 8, 8), full_range=False)
    assert_images(data.val_data, (3, 3, 8, 8), full_range=False)
    with pytest.raises(UserError, match=r"images differ in shape.*set data.image_size"):
        _ = ImageFolderDataModule(path=str(tmp_path), num_val=3).train_data


def test_rgb_to_grey_uses_luminance(tmp_path: Path) -> None:
    colours = np.zeros((3, 4, 4, 3), np.uint8)
    for channel in range(3):
        colours[channel, ..., channel] = 255
    write_pngs(tmp_path, colours)
    data = ImageFolderDataModule(path=str(tmp_path), num_val=1, channels=1, seed=0)
    train_idx, val_idx = data.select(3, None)  # indices into the files in name order: red, green, blue
    grey = torch.cat([data.train_data, data.val_data])
    assert grey.shape == (3, 1, 4, 4)
    expected = torch.tensor([2 * w - 1 for w in (0.299, 0.587, 0.114)])[torch.cat([train_idx, val_idx])]
    assert torch.allclose(grey, expected.reshape(3, 1, 1, 1).expand_as(grey), atol=1e-6)


def test_resize_and_crop_keeps_the_centre() -> None:
    wide = torch.arange(8.0).repeat(4, 1).reshape(1, 1, 4, 8)  # columns 0..7
    assert torch.equal(resize_and_crop(wide, 4), wide[..., 2:6])
    tall = torch.full((2, 3, 30, 20), 0.25)
    out = resize_and_crop(tall, 10)
    assert out.shape == (2, 3, 10, 10)
    assert torch.allclose(out, torch.full_like(out, 0.25))


# ---------------------------------------------------------------------------------------------
# bad input


def test_fashion_mnist_missing_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(UserError) as err:
        _ = FashionMNISTDataModule().train_data
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(UserError) as err:
        _ = FashionMNISTDataModule(root=str(tmp_path)).train_data
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte") in str(err.value)
    assert "torchvision.datasets.FashionMNIST(" in str(err.value)


def test_mnist_missing_root_and_files(tmp_path: Path) -> None:
    required = r"data.root is required for MNIST.*torchvision.datasets.MNIST\(root, download=True\)"
    with pytest.raises(UserError, match=required):
        MNISTDataModule()
    with pytest.raises(UserError) as err:
        _ = MNISTDataModule(root=str(tmp_path)).train_data
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in message
    assert f"torchvision.datasets.MNIST('{tmp_path}', download=True)" in message


def test_cifar10_and_celeba_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        _ = CIFAR10DataModule(root=str(tmp_path)).train_data
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
    assert f"torchvision.datasets.CIFAR10('{tmp_path}', download=True)" in str(err.value)
    with pytest.raises(UserError) as err:
        _ = CelebADataModule(root=str(tmp_path)).train_data
    assert str(tmp_path / "celeba") in str(err.value)
    assert f"torchvision.datasets.CelebA('{tmp_path}', download=True)" in str(err.value)


def test_incomplete_cifar10_and_celeba(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "celeba").mkdir()
    with pytest.raises(UserError, match=r"cifar-10-batches-py is incomplete or corrupted"):
        _ = CIFAR10DataModule(root=str(tmp_path)).train_data
    with pytest.raises(UserError, match=r"celeba is incomplete or corrupted.*img_align_celeba"):
        _ = CelebADataModule(root=str(tmp_path)).train_data


def test_corrupt_idx_files_are_named(tmp_path: Path) -> None:
    make_mnist_root(tmp_path, compress=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(content[:-10]))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz holds 31366 bytes but .* needs 31376"):
        _ = MNISTDataModule(root=str(tmp_path), num_val=3).train_data
    path.write_bytes(path.read_bytes()[:100])  # a cut gzip stream
    with pytest.raises(UserError, match=r"cannot read IDX file .*train-images-idx3-ubyte.gz"):
        read_idx(path)
    path.write_bytes(b"\x89PNG not an idx file")
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz is not an IDX file"):
        read_idx(path)
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    labels.rename(path)
    with pytest.raises(UserError, match=r"shape \(40,\); an IDX image file holds uint8 images"):
        _ = MNISTDataModule(root=str(tmp_path), num_val=3).train_data


def test_unreadable_image_file_is_named(tmp_path: Path) -> None:
    write_pngs(tmp_path, fake_pixels(4, 8, 8, 3, seed=9))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=r"cannot read image file .*broken\.png"):
        _ = ImageFolderDataModule(path=str(tmp_path), num_val=1).train_data


def test_image_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no such folder \(tried .*absent\)"):
        _ = ImageFolderDataModule(path=str(tmp_path / "absent")).train_data
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"holds no image files \(looked for .*\.png"):
        _ = ImageFolderDataModule(path=str(tmp_path)).train_data
    with pytest.raises(UserError, match=r"data.path is required"):
        ImageFolderDataModule()


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        (dict(channels=2), r"data.channels=2 is not valid; use 1 \(grey\), 3 \(RGB\) or null"),
        (dict(split="half_c"), r"data.split='half_c' is not valid; use one of full, half_a, half_b"),
        (dict(image_size=0), r"data.image_size=0 must be >= 1"),
        (dict(num_val=0), r"data.num_val=0 must be >= 1"),
        (dict(num_train=1, split="half_a"), r"data.num_train=1 is too small for data.split=half_a; need >= 2"),
    ],
)
def test_bad_options(options: dict, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern):
        DigitsDataModule(**options)


def test_too_many_images_says_both_numbers() -> None:
    with pytest.raises(UserError, match=r"data.num_train=5000 exceeds the 1297 training images of digits \(1797 minus"):
        _ = DigitsDataModule(num_train=5000).train_data
    with pytest.raises(UserError, match=r"data.num_val=2000 leaves no training images of the 1797"):
        _ = DigitsDataModule(num_val=2000).train_data
    with pytest.raises(UserError, match=r"data.num_train=70000 exceeds the 60000 training images of Fashion-MNIST;"):
        FashionMNISTDataModule(num_train=70_000).select(60_000, 10_000)
    with pytest.raises(UserError, match=r"data.num_val=20000 exceeds the 10000 images of the Fashion-MNIST test"):
        FashionMNISTDataModule(num_val=20_000).select(60_000, 10_000)
