"""OmegaConf resolvers the configs use; registered when :mod:`lightning_diff` is imported, before
any entry point composes a config.

- ``${times:A,B}``: A * B, an int when the product is whole. The study's width presets are
  ``${times:${unet_width},0.5}`` and ``${times:${unet_width},2}``, so they halve and double
  whatever base width the study runs at (``unet_width=16`` on a CPU, 32 as in the paper).
"""

from omegaconf import OmegaConf


def times(a: float, b: float) -> float | int:
    product = float(a) * float(b)
    return int(product) if product.is_integer() else product


def register() -> None:
    if not OmegaConf.has_resolver("times"):
        OmegaConf.register_new_resolver("times", times)
