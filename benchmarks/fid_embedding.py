"""FID embedding throughput: our feature stage plus ``FID.update`` against the bare Inception network.

Ours: ``lightning_diff.metrics.fid.ImageFeatures`` then ``FID.update`` on generated images in
[-1, 1] at 64x64 RGB (8-bit quantisation, bilinear resize to 299, the network, float64 feature
statistics). The
peer: the same network called alone on images already at 299x299. The network is the
TorchScript Inception-v3 found the way the package finds it (``LIGHTNING_DIFF_CACHE``, filled
by ``python -m lightning_diff.prefetch``). Without that file the row says why and measures
torchvision's Inception-v3 architecture with random weights instead (same layers, so the same
speed to within its slightly different pooling), marked as such.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.measure import interleaved
from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.metrics.fid import (
    FID,
    INCEPTION_SIZE,
    ImageFeatures,
    WeightsNotFound,
    load_extractor,
    resolve_weights,
)

DESCRIPTION = (
    "FID embedding images/s: ImageFeatures + FID.update (quantise, resize, Inception, statistics) vs the bare network"
)

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"images": 2, "batch": 2, "repeats": 1},
    "cpu": {"images": 8, "batch": 8, "repeats": 2},
    "gpu": {"images": 2000, "batch": 500, "repeats": 5},
}


class ProxyInception(nn.Module):
    """torchvision's Inception-v3 (random weights) behind the TorchScript extractor's interface."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        self.net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.net.fc = nn.Identity()

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.float()
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.net(x / 128.0 - 1.0)


def extractor() -> tuple[nn.Module, nn.Module, str]:
    """(our extractor, its bare network, what it is)."""
    try:
        source = resolve_weights({"source": "torchscript"})
    except WeightsNotFound as missing:
        print(f"fid_embedding: {missing}\nfid_embedding: measuring the architecture with random weights instead")
        proxy = ProxyInception().eval()
        return proxy, proxy.net, "torchvision Inception-v3, random weights (FID weights absent)"
    loaded = load_extractor(source)
    return loaded, loaded.net, f"TorchScript Inception-v3 ({source.path.name})"


def run(config: Config) -> list[Row]:
    settings, device = config.settings, config.device
    ours_net, bare, what = extractor()
    embed = ImageFeatures(ours_net, batch_size=settings["batch"]).to(device)
    metric = FID(embed.num_features).to(device)
    bare = bare.to(device)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(settings["images"], 3, 64, 64, generator=gen) * 2 - 1).to(device)
    resized = torch.rand(settings["batch"], 3, INCEPTION_SIZE, INCEPTION_SIZE, generator=gen).mul(2).sub(1).to(device)

    @torch.no_grad()
    def ours() -> None:
        metric.update(embed(images))

    @torch.no_grad()
    def peer() -> None:
        for _ in range(0, settings["images"], settings["batch"]):
            bare(resized)

    times = interleaved({"ours": ours, "peer": peer}, device, repeats=settings["repeats"])
    count = settings["images"]
    case = f"{count} images 64x64 -> 299, batch {settings['batch']}"
    return [Row.images_per_second("fid_embedding", case, count, times, "bare network at 299", what)]
