"""The paper's UNet denoiser (after Kadkhodaie et al.'s bias-free UNet) with ablation knobs.

Paper configuration (RGB 64x64, ``num_blocks=3``, ``base_channels=32``):

- encoder level b (b = 0..num_blocks-1): two kxk convs to ``base_channels * 2**b`` channels,
  each followed by norm and ReLU (the network's first conv has no norm), then a 2x down;
- middle: two kxk convs to ``base_channels * 2**num_blocks`` channels, norm + ReLU each;
- decoder level b (deepest first): a 2x2 stride-2 transposed conv halving the channels,
  concatenation with encoder level b's features, then two kxk convs (norm + ReLU) at the
  deeper levels and one at the top level;
- a last kxk conv to the image channels, with neither norm nor activation.

No conv has a bias, so with ``norm="bias_free_batch"`` (or ``"none"``) the network has no
additive constant anywhere and is positively homogeneous in eval mode: D(a y) = a D(y), a > 0.
That is 1,918,272 parameters with affine BatchNorm and 1,916,928 with the bias-free norm.

Knobs: skip connections (all, none, or a per-level mask that zero-fills the masked skips so
the parameter count stays that of ``concat``), norm, padding mode, depth, width, kernel size,
down- and upsampling operators, and self-attention at the lowest resolution. ``build`` wraps
the network in one of the three conditioning modes; the ``conditioned`` network modulates
every conv block with a per-channel projection of a noise embedding.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_diff.denoisers.conditioning import NoiseEmbedding, wrap
from lightning_diff.denoisers.contract import Denoiser, check_choice, check_only_fit
from lightning_diff.denoisers.registry import family
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError

SKIPS = ("concat", "none")
NORMS = ("batch", "bias_free_batch", "group", "none")
# The scale's start: "ones" (torch's default), or "release": randn * (2/9/64) clamped to
# +-0.025, as the bias-free CNNs of Kadkhodaie et al. and the paper authors' release start theirs.
NORM_INITS = ("ones", "release")
RELEASE_SCALE_STD = 2.0 / 9.0 / 64.0
RELEASE_SCALE_CLAMP = 0.025
PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
DOWNSAMPLES = ("avg", "max", "conv")
UPSAMPLES = ("transpose", "nearest_conv")
TIME_MODULATIONS = ("film", "scale", "additive")
BIAS_FREE_NORMS = ("bias_free_batch", "none")

PAPER_DATA_SHAPE = (3, 64, 64)


def _check_positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"denoiser.{key}={value!r} is not valid; it must be an integer >= 1")


def skip_mask(skip: str | Sequence[bool], num_blocks: int) -> list[bool]:
    """Which levels (0 = full resolution) pass their encoder features to the decoder."""
    if isinstance(skip, str) and skip in SKIPS:
        return [skip == "concat"] * num_blocks
    if isinstance(skip, str) or not isinstance(skip, Sequence) or not all(isinstance(flag, bool) for flag in skip):
        raise UserError(
            f"denoiser.skip={skip!r} is not valid; choose one of {', '.join(SKIPS)} or a list of "
            f"{num_blocks} booleans (one per level, full resolution first)"
        )
    if len(skip) != num_blocks:
        raise UserError(
            f"denoiser.skip has {len(skip)} entries but the UNet has denoiser.num_blocks={num_blocks} levels; "
            f"give one boolean per level, full resolution first, e.g. {[True] * num_blocks}"
        )
    return list(skip)


def check_image_size(height: int, width: int, num_blocks: int, kernel_size: int, padding_mode: str) -> None:
    """The image must halve ``num_blocks`` times, and the padding must fit the smallest map."""
    factor = 2**num_blocks
    if height % factor or width % factor:
        depths = [n for n in range(1, num_blocks) if height % 2**n == 0 and width % 2**n == 0]
        depth_hint = (
            f"depths that work at {height}x{width}: denoiser.num_blocks in {', '.join(map(str, depths))}"
            if depths
            else f"no depth works at {height}x{width} (an odd side cannot be halved)"
        )
        sizes = [s for s in ((min(height, width) // factor) * factor, (min(height, width) // factor + 1) * factor) if s]
        raise UserError(
            f"image size {height}x{width} is not divisible by 2**num_blocks = {factor} "
            f"(denoiser.num_blocks={num_blocks} halves it {num_blocks} times); {depth_hint}; "
            f"or resize/pad the images to a multiple of {factor} (e.g. {' or '.join(map(str, sizes))})"
        )
    lowest = min(height, width) // factor
    pad = kernel_size // 2
    # PyTorch refuses reflect padding as wide as the map, and circular padding that wraps twice.
    too_small = (padding_mode == "reflect" and pad >= lowest) or (padding_mode == "circular" and pad > lowest)
    if too_small:
        raise UserError(
            f"denoiser.padding_mode={padding_mode} with denoiser.kernel_size={kernel_size} pads {pad} pixel(s), "
            f"but the lowest-resolution map of a {height}x{width} image at denoiser.num_blocks={num_blocks} is "
            f"only {lowest}x{lowest}; use fewer levels, a larger image, a smaller kernel, or padding_mode "
            "zeros/replicate"
        )


class BiasFreeBatchNorm2d(nn.Module):
    """Divide each channel by its batch standard deviation and multiply by a learned scale.

    Unlike BatchNorm there is no mean subtraction and no shift, so the layer adds no constant;
    eval mode divides by a running standard deviation instead, which makes it linear in x.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer("running_std", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            # Statistics in float32 so the layer also works under bf16/fp16 autocast.
            std = torch.sqrt(x.float().var(dim=(0, 2, 3), unbiased=False) + self.eps)
            with torch.no_grad():
                # Out of place then copied: torch.func.vmap (the stacked per-level path) has no
                # batching rule for the in-place lerp_, and this is the same arithmetic.
                self.running_std.copy_(torch.lerp(self.running_std, std.detach(), self.momentum))
        else:
            std = self.running_std
        return x * (self.weight / std).reshape(1, -1, 1, 1).to(x.dtype)


def make_norm(norm: str, channels: int, norm_groups: int, norm_init: str = "ones") -> nn.Module:
    """The normalisation layer for ``channels`` feature maps, its scale started as ``norm_init``."""
    if norm == "batch":
        layer: nn.Module = nn.BatchNorm2d(channels)
    elif norm == "bias_free_batch":
        layer = BiasFreeBatchNorm2d(channels)
    elif norm == "group":
        # Largest group count up to norm_groups that divides the channels, so any width works.
        groups = max(g for g in range(1, min(norm_groups, channels) + 1) if channels % g == 0)
        layer = nn.GroupNorm(groups, channels)
    else:
        return nn.Identity()
    if norm_init == "release":
        with torch.no_grad():
            scale = torch.randn(channels) * RELEASE_SCALE_STD
            layer.weight.copy_(scale.clamp_(-RELEASE_SCALE_CLAMP, RELEASE_SCALE_CLAMP))
    return layer


def default_norm_init(norm: str, norm_init: str | None) -> str:
    """``norm_init``, or for null the release's start for bias-free batch norm and ones otherwise."""
    if norm_init is None:
        return "release" if norm == "bias_free_batch" else "ones"
    check_choice("norm_init", norm_init, NORM_INITS)
    return norm_init


class ConvUnit(nn.Module):
    """kxk conv (no bias) -> norm -> optional noise-level modulation -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding_mode: str,
        norm: nn.Module,
        embedding_dim: int,
        time_modulation: str,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, padding_mode=padding_mode, bias=False
        )
        self.norm = norm
        self.time_modulation = time_modulation
        self.modulation = None
        if embedding_dim:
            factor = 2 if time_modulation == "film" else 1
            self.modulation = nn.Linear(embedding_dim, factor * out_channels)

    def forward(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        h = self.norm(self.conv(x))
        if self.modulation is not None:
            assert embedding is not None, "a conditioned UNet needs the noise level"
            projection = self.modulation(embedding)[:, :, None, None]
            if self.time_modulation == "film":
                scale, shift = projection.chunk(2, dim=1)
                h = h * (1.0 + scale) + shift
            elif self.time_modulation == "scale":
                h = h * (1.0 + projection)
            else:
                h = h + projection
        return F.relu(h)


class ConvStack(nn.Module):
    """ConvUnits applied in order, all seeing the same noise embedding."""

    def __init__(self, units: list[ConvUnit]) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)

    def forward(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        for unit in self.units:
            x = unit(x, embedding)
        return x


class LowResolutionAttention(nn.Module):
    """Residual multi-head self-attention over all positions of a feature map.

    Without biases it adds no constant, but the softmax weights change with the input's scale,
    so a UNet with attention is not positively homogeneous even with a bias-free norm.
    """

    def __init__(self, channels: int, heads: int, norm: nn.Module, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm = norm
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=bias)
        self.proj = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.heads, channels // self.heads, height * width)
        q, k, v = (part.transpose(-1, -2) for part in qkv.unbind(dim=1))
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(attended.transpose(-1, -2).reshape(batch, channels, height, width))


def check_knobs(
    data_shape: tuple[int, ...], num_blocks: int, base_channels: int, kernel_size: int, norm: str, padding_mode: str,
    downsample: str, upsample: str,
) -> None:
    """The architecture knobs, each refused with one message naming it."""
    _check_positive_int("num_blocks", num_blocks)
    _check_positive_int("base_channels", base_channels)
    _check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise UserError(
            f"denoiser.kernel_size={kernel_size} is even; use an odd size (1, 3, 5, ...) so 'same' padding "
            "keeps the feature maps aligned with the skip connections"
        )
    check_choice("norm", norm, NORMS)
    check_choice("padding_mode", padding_mode, PADDING_MODES)
    check_choice("downsample", downsample, DOWNSAMPLES)
    check_choice("upsample", upsample, UPSAMPLES)
    check_image_size(data_shape[1], data_shape[2], num_blocks, kernel_size, padding_mode)


def check_attention(attention: bool, attention_heads: int, bottom: int) -> None:
    """Attention at the lowest resolution (``bottom`` channels) needs heads that divide them."""
    if not isinstance(attention, bool):
        raise UserError(f"denoiser.attention={attention!r} is not valid; use true or false")
    if attention:
        _check_positive_int("attention_heads", attention_heads)
        if bottom % attention_heads:
            raise UserError(
                f"denoiser.attention_heads={attention_heads} does not divide the {bottom} channels at the lowest "
                f"resolution (base_channels * 2**num_blocks); use a divisor of {bottom}"
            )


class UNet(nn.Module):
    """``net(y)`` (or ``net(y, t)`` when built with a noise embedding) -> x0_hat, same shape as y.

    ``data_shape`` is (C, H, W); H and W must be divisible by ``2**num_blocks``. Level b has
    ``base_channels * 2**b`` channels; the middle has ``base_channels * 2**num_blocks``.
    ``skip`` is ``"concat"``, ``"none"`` or one boolean per level (full resolution first).
    ``embedding_dim > 0`` adds a noise embedding that modulates every conv block per channel:
    ``time_modulation`` ``film`` (scale and shift), ``scale`` or ``additive``; by default
    ``scale`` for a bias-free norm (a shift would be an additive constant) and ``film`` otherwise.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_blocks: int = 3,
        base_channels: int = 32,
        kernel_size: int = 3,
        skip: str | Sequence[bool] = "concat",
        norm: str = "batch",
        padding_mode: str = "zeros",
        downsample: str = "avg",
        upsample: str = "transpose",
        attention: bool = False,
        attention_heads: int = 4,
        norm_groups: int = 8,
        in_channels: int | None = None,
        embedding_dim: int = 0,
        time_modulation: str | None = None,
        norm_init: str | None = None,
    ) -> None:
        super().__init__()
        channels = _validated_channels(data_shape, in_channels)
        check_knobs(data_shape, num_blocks, base_channels, kernel_size, norm, padding_mode, downsample, upsample)
        check_attention(attention, attention_heads, base_channels * 2**num_blocks)
        _check_positive_int("norm_groups", norm_groups)
        norm_init = default_norm_init(norm, norm_init)
        bottom = base_channels * 2**num_blocks
        self.bias_free = norm in BIAS_FREE_NORMS
        if time_modulation is None:
            # A shift is an additive constant; scale-only keeps a bias-free net homogeneous in y.
            time_modulation = "scale" if self.bias_free else "film"
        check_choice("time_modulation", time_modulation, TIME_MODULATIONS)

        self.in_channels = channels
        self.num_blocks = num_blocks
        self.kernel_size = kernel_size
        self.padding_mode = padding_mode
        self.skip_levels = skip_mask(skip, num_blocks)
        # A masked level still concatenates (zeros), so its convs keep the concat width.
        self.concat_width = skip != "none"
        widths = [base_channels * 2**level for level in range(num_blocks + 1)]

        def unit(fan_in: int, fan_out: int, normalised: bool = True) -> ConvUnit:
            layer_norm = make_norm(norm, fan_out, norm_groups, norm_init) if normalised else nn.Identity()
            return ConvUnit(fan_in, fan_out, kernel_size, padding_mode, layer_norm, embedding_dim, time_modulation)

        self.encoder, self.down = self._encoder(unit, widths, channels, downsample)
        self.middle = ConvStack([unit(widths[-2], bottom), unit(bottom, bottom)])
        self.attention = None
        if attention:
            attention_norm = make_norm(norm, bottom, norm_groups, norm_init)
            self.attention = LowResolutionAttention(bottom, attention_heads, attention_norm, bias=not self.bias_free)
        self.up, self.decoder = self._decoder(unit, widths, upsample)
        self.output = nn.Conv2d(
            widths[0], channels, kernel_size, padding=kernel_size // 2, padding_mode=padding_mode, bias=False
        )
        self.embedding = NoiseEmbedding(embedding_dim) if embedding_dim else None

    def _encoder(
        self, unit: Callable[..., ConvUnit], widths: list[int], channels: int, downsample: str
    ) -> tuple[nn.ModuleList, nn.ModuleList]:
        """Per level, two convs (the first without norm at full resolution), then the downsampler."""
        encoder, down = nn.ModuleList(), nn.ModuleList()
        fan_in = channels
        for level in range(self.num_blocks):
            width = widths[level]
            encoder.append(ConvStack([unit(fan_in, width, normalised=level > 0), unit(width, width)]))
            down.append(_downsampler(downsample, width))
            fan_in = width
        return encoder, down

    def _decoder(
        self, unit: Callable[..., ConvUnit], widths: list[int], upsample: str
    ) -> tuple[nn.ModuleList, nn.ModuleList]:
        """Per level, the upsampler, then two convs (one at full resolution) on the concatenation."""
        up, decoder = nn.ModuleList(), nn.ModuleList()
        for level in range(self.num_blocks):
            width = widths[level]
            up.append(_upsampler(upsample, widths[level + 1], width, self.kernel_size, self.padding_mode))
            units = [unit(2 * width if self.concat_width else width, width)]
            if level > 0:
                units.append(unit(width, width))
            decoder.append(ConvStack(units))
        return up, decoder

    def forward(self, y: Tensor, t: Tensor | None = None) -> Tensor:
        self._check_input(y)
        embedding = None
        if self.embedding is not None:  # the conditioned form: the Denoiser contract has checked t
            embedding = self.embedding(t)
        h = y
        skips = []
        for encode, down in zip(self.encoder, self.down, strict=True):
            h = encode(h, embedding)
            skips.append(h)
            h = down(h)
        h = self.middle(h, embedding)
        if self.attention is not None:
            h = self.attention(h)
        for level in reversed(range(self.num_blocks)):
            h = self.up[level](h)
            if self.skip_levels[level]:
                h = torch.cat([h, skips[level]], dim=1)
            elif self.concat_width:
                h = torch.cat([h, torch.zeros_like(skips[level])], dim=1)
            h = self.decoder[level](h, embedding)
        return self.output(h)

    def _check_input(self, y: Tensor) -> None:
        if y.dim() != 4 or y.shape[1] != self.in_channels:
            raise UserError(
                f"the UNet was built for images with {self.in_channels} channel(s) (batch, C, H, W) but got a tensor "
                f"of shape {tuple(y.shape)}; rebuild it for this data's shape"
            )
        check_image_size(y.shape[2], y.shape[3], self.num_blocks, self.kernel_size, self.padding_mode)


def _validated_channels(data_shape: tuple[int, ...], in_channels: int | None) -> int:
    if len(data_shape) != 3:
        raise UserError(
            f"the unet denoiser needs image data of shape (C, H, W), got data shape {tuple(data_shape)}; "
            "use an image dataset, or a family for vectors (linear, polynomial, bottleneck)"
        )
    channels = int(data_shape[0])
    if in_channels is not None and in_channels != channels:
        raise UserError(
            f"denoiser.in_channels={in_channels} but the data has {channels} channel(s) (data shape "
            f"{tuple(data_shape)}); remove denoiser.in_channels (it defaults to the data's) or set it to {channels}"
        )
    return channels


def _downsampler(kind: str, channels: int) -> nn.Module:
    if kind == "avg":
        return nn.AvgPool2d(2)
    if kind == "max":
        return nn.MaxPool2d(2)
    return nn.Conv2d(channels, channels, 2, stride=2, bias=False)


def _upsampler(kind: str, fan_in: int, fan_out: int, kernel_size: int, padding_mode: str) -> nn.Module:
    if kind == "transpose":
        return nn.ConvTranspose2d(fan_in, fan_out, 2, stride=2, bias=False)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(fan_in, fan_out, kernel_size, padding=kernel_size // 2, padding_mode=padding_mode, bias=False),
    )


def paper_unet(**overrides: object) -> UNet:
    """One network at the paper's configuration (RGB 64x64), with any knob overridden."""
    settings: dict[str, object] = {"data_shape": PAPER_DATA_SHAPE, **overrides}
    return UNet(**settings)  # type: ignore[arg-type]


@family("unet")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "sgd",
    conditioning: str = "per_level",
    num_blocks: int = 3,
    base_channels: int = 32,
    kernel_size: int = 3,
    skip: str | Sequence[bool] = "concat",
    norm: str = "batch",
    padding_mode: str = "zeros",
    downsample: str = "avg",
    upsample: str = "transpose",
    attention: bool = False,
    attention_heads: int = 4,
    norm_groups: int = 8,
    in_channels: int | None = None,
    embedding_dim: int = 64,
    time_modulation: str | None = None,
    norm_init: str | None = None,
    stacked: bool | str = "auto",
    preconditioning: str = "none",
    sigma_data: float = 0.5,
) -> Denoiser:
    """UNet denoiser trained by SGD in any conditioning mode (``embedding_dim`` is for ``conditioned``)."""
    check_only_fit(fit, "sgd", "unet")
    _check_positive_int("embedding_dim", embedding_dim)
    knobs = dict(
        num_blocks=num_blocks,
        base_channels=base_channels,
        kernel_size=kernel_size,
        skip=skip,
        norm=norm,
        padding_mode=padding_mode,
        downsample=downsample,
        upsample=upsample,
        attention=attention,
        attention_heads=attention_heads,
        norm_groups=norm_groups,
        in_channels=in_channels,
        time_modulation=time_modulation,
        norm_init=norm_init,
    )
    shape = tuple(data_shape)

    def make(embedding: int = 0) -> UNet:
        return UNet(shape, embedding_dim=embedding, **knobs)  # type: ignore[arg-type]

    return wrap(
        conditioning, grid, make, lambda: make(embedding_dim), family="unet", stacked=stacked,
        preconditioning=preconditioning, sigma_data=sigma_data,
    )
