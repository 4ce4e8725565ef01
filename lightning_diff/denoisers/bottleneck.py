"""MLP denoisers with a k-dimensional bottleneck: encoder -> k -> decoder.

Hidden layers of ``width`` units with an activation, except the bottleneck layer of ``k``
units in the middle, which is linear: the output is then decoder(z) for a code z in R^k, so
samples lie on the k-dimensional image of the last level's decoder. Presets follow the
paper: the image MLP (width 200, nine hidden layers, LeakyReLU 0.2, Tanh output) and the
2-D toy 2-64-1-64-2.
"""

import math

import torch
from torch import Tensor, nn

from lightning_diff.denoisers.conditioning import NoiseEmbedding, wrap
from lightning_diff.denoisers.contract import Denoiser, check_only_fit
from lightning_diff.denoisers.registry import family
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError

ACTIVATIONS = ("leaky_relu", "relu", "silu", "tanh")
OUTPUTS = ("none", "tanh")


def _activation(name: str, negative_slope: float) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    if name == "tanh":
        return nn.Tanh()
    raise UserError(f"denoiser.activation={name!r} is not valid; choose one of {', '.join(ACTIVATIONS)}")


def hidden_widths(depth: int, width: int, bottleneck: int | None) -> list[int]:
    """Widths of the ``depth`` hidden layers; the middle one is the bottleneck when given."""
    if depth < 1:
        raise UserError(f"denoiser.depth={depth} must be >= 1")
    widths = [width] * depth
    if bottleneck is not None:
        if bottleneck < 1:
            raise UserError(f"denoiser.bottleneck={bottleneck} must be >= 1 (or null for none)")
        widths[depth // 2] = bottleneck
    return widths


class BottleneckMLP(nn.Module):
    """``encoder`` maps (y[, noise embedding]) to the code, ``decoder`` maps the code to x0."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        depth: int,
        width: int,
        bottleneck: int | None,
        activation: str,
        negative_slope: float,
        output: str,
        embedding_dim: int = 0,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise UserError(f"denoiser.output={output!r} is not valid; choose one of {', '.join(OUTPUTS)}")
        dim = int(math.prod(data_shape))
        widths = hidden_widths(depth, width, bottleneck)
        code = depth // 2 if bottleneck is not None else depth - 1
        encoder: list[nn.Module] = []
        decoder: list[nn.Module] = []
        fan_in = dim + embedding_dim
        for i, fan_out in enumerate(widths):
            layers = encoder if i <= code else decoder
            layers.append(nn.Linear(fan_in, fan_out))
            # The bottleneck code itself stays linear, so outputs are decoder(z) with z in R^k.
            if not (bottleneck is not None and i == code):
                layers.append(_activation(activation, negative_slope))
            fan_in = fan_out
        decoder.append(nn.Linear(fan_in, dim))
        if output == "tanh":
            decoder.append(nn.Tanh())
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.embedding = NoiseEmbedding(embedding_dim) if embedding_dim else None

    def forward(self, y: Tensor, t: Tensor | None = None) -> Tensor:
        flat = y.reshape(y.shape[0], -1)
        if self.embedding is not None:  # the conditioned form: the Denoiser contract has checked t
            flat = torch.cat([flat, self.embedding(t)], dim=1)
        return self.decoder(self.encoder(flat)).reshape(y.shape)


@family("bottleneck")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "sgd",
    conditioning: str = "per_level",
    depth: int = 3,
    width: int = 64,
    bottleneck: int | None = 1,
    activation: str = "relu",
    negative_slope: float = 0.2,
    output: str = "none",
    embedding_dim: int = 64,
    stacked: bool | str = "auto",
    preconditioning: str = "none",
    sigma_data: float = 0.5,
) -> Denoiser:
    """Bottleneck MLP denoiser, trained by SGD in any conditioning mode (defaults: the paper's
    2-D toy, 2-64-1-64-2)."""
    check_only_fit(fit, "sgd", "bottleneck")

    def make(embedding: int = 0) -> BottleneckMLP:
        return BottleneckMLP(data_shape, depth, width, bottleneck, activation, negative_slope, output, embedding)

    return wrap(
        conditioning, grid, make, lambda: make(embedding_dim), family="bottleneck", stacked=stacked,
        preconditioning=preconditioning, sigma_data=sigma_data,
    )


@family("bottleneck_image")
def build_image(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "sgd",
    conditioning: str = "per_level",
    depth: int = 9,
    width: int = 200,
    bottleneck: int | None = 64,
    activation: str = "leaky_relu",
    negative_slope: float = 0.2,
    output: str = "tanh",
    embedding_dim: int = 64,
    stacked: bool | str = "auto",
    preconditioning: str = "none",
    sigma_data: float = 0.5,
) -> Denoiser:
    """The paper's image MLP (width 200, nine hidden layers, LeakyReLU 0.2, Tanh output), the
    middle layer the bottleneck: the same family as :func:`build` with the image defaults."""
    return build(
        data_shape, grid, fit=fit, conditioning=conditioning, depth=depth, width=width, bottleneck=bottleneck,
        activation=activation, negative_slope=negative_slope, output=output, embedding_dim=embedding_dim,
        stacked=stacked, preconditioning=preconditioning, sigma_data=sigma_data,
    )
