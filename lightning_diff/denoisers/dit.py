"""Diffusion transformer (DiT) denoisers on image patches, built from timm's layers.

The image is cut into ``patch_size`` x ``patch_size`` patches (a convolution whose stride is
the patch size), each patch becomes a token of ``width`` features plus a 2-D position
embedding, ``depth`` transformer blocks mix the tokens, and a final layer projects every token
back to its patch's pixels. Blocks use adaLN-Zero (Peebles & Xie 2023): a conditioning vector
sets a shift, scale and gate for each sub-layer, and the gates start at zero so every block
starts as the identity.

The conditioning vector is a noise embedding of t in the ``conditioned`` mode and a learned
constant in the ``per_level`` and ``blind`` modes, so one block design serves all three.
"""

import math
from functools import partial

import torch
from timm.layers import Attention, Mlp, build_sincos2d_pos_embed
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_diff.denoisers.conditioning import NoiseEmbedding, wrap
from lightning_diff.denoisers.contract import Denoiser, check_only_fit
from lightning_diff.denoisers.registry import family
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError

POS_EMBEDS = ("sincos", "learned")


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    # "1 + scale" keeps the plain normalised input when the modulation outputs zero.
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class AdaLNZeroBlock(nn.Module):
    """Pre-norm attention + MLP block whose norms and residual gates are set by a vector ``c``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        # The modulation supplies the affine part of both norms, so they carry no parameters.
        self.attn_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads=heads, qkv_bias=True)
        self.mlp_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, hidden_features=int(width * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh"))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x``: tokens (B, N, width); ``c``: conditioning vectors (B, width)."""
        attn_shift, attn_scale, attn_gate, mlp_shift, mlp_scale, mlp_gate = self.modulation(c).chunk(6, dim=1)
        x = x + attn_gate.unsqueeze(1) * self.attn(_modulate(self.attn_norm(x), attn_shift, attn_scale))
        return x + mlp_gate.unsqueeze(1) * self.mlp(_modulate(self.mlp_norm(x), mlp_shift, mlp_scale))


class FinalLayer(nn.Module):
    """adaLN-modulated norm, then a linear map from each token to its patch's pixels."""

    def __init__(self, width: int, patch_pixels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_pixels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Patch transformer ``net(y[, t]) -> x0_hat`` for images of shape (C, H, W).

    With ``time_conditioned`` the adaLN vector is ``NoiseEmbedding(width)(t)``; without it the
    vector is a learned constant and the network is called as ``net(y)``.
    """

    def __init__(
        self,
        data_shape: tuple[int, int, int],
        patch_size: int,
        depth: int,
        width: int,
        heads: int,
        mlp_ratio: float,
        pos_embed: str,
        time_conditioned: bool,
    ) -> None:
        super().__init__()
        channels, height, width_px = data_shape
        self.patch_size = patch_size
        self.image_size = (height, width_px)
        grid_shape = [height // patch_size, width_px // patch_size]
        self.patch_embed = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        if pos_embed == "sincos":
            # Recomputed from the shape on construction, so it need not live in checkpoints.
            sincos = build_sincos2d_pos_embed(grid_shape, dim=width).unsqueeze(0)
            self.register_buffer("pos_embed", sincos, persistent=False)
        else:
            self.pos_embed = nn.Parameter(0.02 * torch.randn(1, grid_shape[0] * grid_shape[1], width))
        self.blocks = nn.ModuleList(AdaLNZeroBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(width, channels * patch_size * patch_size)
        self._init_weights()
        if time_conditioned:
            self.time_embedding: NoiseEmbedding | None = NoiseEmbedding(width)
            self.register_parameter("constant", None)
        else:
            self.time_embedding = None
            # Random rather than zero: with a zero vector SiLU(c) = 0, the modulation weights would
            # never receive a gradient and only their biases would learn.
            self.constant = nn.Parameter(torch.randn(width))

    def _init_weights(self) -> None:
        # Xavier weights and zero biases for the transformer (as in DiT), then the adaLN-Zero part:
        # zero modulations make every gate zero (each block is the identity) and a zero output
        # projection makes the first prediction x0_hat = 0, the mean of centred data.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final.modulation[-1].weight)
        nn.init.zeros_(self.final.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def embed(self, y: Tensor) -> Tensor:
        """Patch tokens plus position embedding, (B, N, width), in row-major patch order."""
        return self.patch_embed(y).flatten(2).transpose(1, 2) + self.pos_embed

    def conditioning_vector(self, batch: int, t: Tensor | None) -> Tensor:
        """The adaLN vector per sample, (B, width): the noise embedding of t, or the constant."""
        if self.time_embedding is None:
            return self.constant.expand(batch, -1)
        return self.time_embedding(t)  # the conditioned form: the Denoiser contract has checked t

    def unpatchify(self, patches: Tensor) -> Tensor:
        """Tokens of patch pixels (B, N, C * p * p), row-major, to images (B, C, H, W)."""
        p = self.patch_size
        return F.fold(patches.transpose(1, 2), output_size=self.image_size, kernel_size=p, stride=p)

    def forward(self, y: Tensor, t: Tensor | None = None) -> Tensor:
        c = self.conditioning_vector(y.shape[0], t)
        x = self.embed(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final(x, c))


def _check_shape(data_shape: tuple[int, ...], patch_size: int) -> tuple[int, int, int]:
    if len(data_shape) != 3:
        raise UserError(
            f"denoiser dit needs image data of shape (channels, height, width), got data shape "
            f"{tuple(data_shape)}; use an image dataset, or a vector family (linear, polynomial, bottleneck)"
        )
    if patch_size < 1:
        raise UserError(f"denoiser.patch_size={patch_size} must be >= 1")
    channels, height, width_px = (int(s) for s in data_shape)
    if height % patch_size or width_px % patch_size:
        common = _divisors(math.gcd(height, width_px))
        raise UserError(
            f"image size {height}x{width_px} is not divisible by denoiser.patch_size={patch_size}; "
            f"patch sizes that divide it: {', '.join(map(str, common))} "
            f"(or use images whose sides are multiples of {patch_size})"
        )
    return channels, height, width_px


def _check_knobs(depth: int, width: int, heads: int, mlp_ratio: float, pos_embed: str) -> None:
    if depth < 1:
        raise UserError(f"denoiser.depth={depth} must be >= 1 (the number of transformer blocks)")
    if width < 1 or heads < 1:
        raise UserError(f"denoiser.width={width} and denoiser.heads={heads} must both be >= 1")
    if width % heads:
        near = sorted({width - width % heads, width - width % heads + heads} - {0})
        raise UserError(
            f"denoiser.width={width} is not divisible by denoiser.heads={heads}; heads that divide it: "
            f"{', '.join(map(str, _divisors(width)))} (or width {' or '.join(map(str, near))})"
        )
    if int(width * mlp_ratio) < 1:
        raise UserError(f"denoiser.mlp_ratio={mlp_ratio} must be > 0 and give at least one MLP unit at width {width}")
    if pos_embed not in POS_EMBEDS:
        raise UserError(f"denoiser.pos_embed={pos_embed!r} is not valid; choose one of {', '.join(POS_EMBEDS)}")
    if pos_embed == "sincos" and width % 4:
        raise UserError(
            f"denoiser.pos_embed=sincos splits denoiser.width={width} into four sin/cos bands, so width must "
            f"be a multiple of 4 (e.g. {width - width % 4 or 4} or {width - width % 4 + 4}); or use pos_embed=learned"
        )


@family("dit")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "sgd",
    conditioning: str = "conditioned",
    patch_size: int = 2,
    depth: int = 4,
    width: int = 128,
    heads: int = 4,
    mlp_ratio: float = 4.0,
    pos_embed: str = "sincos",
    stacked: bool | str = "auto",
    preconditioning: str = "none",
    sigma_data: float = 0.5,
) -> Denoiser:
    """DiT denoiser ``D(y, t)`` in any conditioning mode, trained by SGD.

    ``pos_embed`` is ``sincos`` (fixed 2-D sin-cos) or ``learned``.
    """
    check_only_fit(fit, "sgd", "dit")
    image_shape = _check_shape(data_shape, patch_size)
    _check_knobs(depth, width, heads, mlp_ratio, pos_embed)

    def make(time_conditioned: bool) -> DiT:
        return DiT(image_shape, patch_size, depth, width, heads, mlp_ratio, pos_embed, time_conditioned)

    return wrap(
        conditioning, grid, lambda: make(False), lambda: make(True), family="dit", stacked=stacked,
        preconditioning=preconditioning, sigma_data=sigma_data,
    )
