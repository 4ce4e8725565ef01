"""The feature networks FID can embed images with, each loaded from a verified local file and
checked to give (B, num_features) features."""

import importlib.util
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_diff.errors import UserError
from lightning_diff.metrics.fid.weights import INCEPTION_FEATURES, INCEPTION_SIZE, SETTINGS_KEY, FeatureSource


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
