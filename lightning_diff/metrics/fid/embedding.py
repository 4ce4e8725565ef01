"""Images to features, once per image: the one feature stage that FID, KID and PRDC share.

Embedding is the expensive part of every realism metric (about 6 images/s for Inception on 2
CPU cores), so a measurement embeds each generated image once and gives the same features to
every metric on them.
"""

import torch
from torch import Tensor, nn

from lightning_diff.errors import UserError
from lightning_diff.metrics.fid.extractors import to_uint8_rgb
from lightning_diff.metrics.fid.weights import SETTINGS_KEY


class ImageFeatures(nn.Module):
    """Images (B, C, H, W) in [-1, 1] to features (B, num_features), ``batch_size`` images at a time,
    on the images' device (move this module there too).

    Images are quantised to 8 bits (as when saved) and grey is repeated to RGB before the network
    sees them (:func:`~lightning_diff.metrics.fid.to_uint8_rgb`).

    Args:
        extractor: a module mapping uint8 (B, 3, H, W) to (B, num_features); see
            :func:`~lightning_diff.metrics.fid.load_extractor`.
        batch_size: images per forward pass (bounds the memory of the network's activations).
    """

    def __init__(self, extractor: nn.Module, batch_size: int = 50) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"{SETTINGS_KEY}.batch_size={batch_size} must be >= 1")
        self.extractor = extractor.eval()
        self.batch_size = batch_size
        self.num_features = int(extractor.num_features)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        pixels = to_uint8_rgb(images)
        return torch.cat([self.extractor(chunk).float() for chunk in pixels.split(self.batch_size)])
