"""The paper's UNet: exact parameter counts, every knob's shapes, homogeneity, equivariance."""


import pytest
import torch
from torch import nn

from lightning_diff.denoisers.conditioning import PerLevel
from lightning_diff.denoisers.unet import (
    NORMS,
    PADDING_MODES,
    RELEASE_SCALE_CLAMP,
    RELEASE_SCALE_STD,
    BiasFreeBatchNorm2d,
    UNet,
    build,
    paper_unet,
)
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def alternating_mask(num_blocks: int) -> list[bool]:
    return [level % 2 == 0 for level in range(num_blocks)]


def warmed_up(net: UNet, shape: tuple[int, ...], steps: int = 3) -> UNet:
    """Run a few train-mode passes so running statistics move off their initial values, then eval."""
    net.train()
    with torch.no_grad():
        for step in range(steps):
            net(torch.randn(4, *shape) * (1.0 + step) + 0.5)
    return net.eval()


@pytest.mark.parametrize(("norm", "expected"), [("batch", 1_918_272), ("bias_free_batch", 1_916_928)])
def test_paper_configuration_has_the_papers_parameter_count(norm: str, expected: int) -> None:
    assert count(paper_unet(norm=norm)) == expected


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("skip", ["concat", "none", "mask"])
def test_every_combination_keeps_the_input_shape_or_refuses_clearly(skip: str, norm: str, padding_mode: str) -> None:
    torch.manual_seed(0)
    for num_blocks in (2, 3, 4):
        skip_value = alternating_mask(num_blocks) if skip == "mask" else skip
        for size in (16, 32, 64, 28):
            channels = 3 if size == 32 else 1
            lowest = size // 2**num_blocks
            fits = size % 2**num_blocks == 0 and not (padding_mode == "reflect" and lowest <= 1)
            knobs = dict(num_blocks=num_blocks, base_channels=4, skip=skip_value, norm=norm, padding_mode=padding_mode)
            if not fits:
                with pytest.raises(UserError, match="num_blocks"):
                    UNet((channels, size, size), **knobs)
                continue
            net = UNet((channels, size, size), **knobs)
            y = torch.randn(2, channels, size, size)
            with torch.no_grad():
                out = net(y)
            assert out.shape == y.shape
            assert torch.isfinite(out).all()


def test_28_pixels_works_at_two_levels_and_names_the_working_depths_at_three() -> None:
    assert UNet((1, 28, 28), num_blocks=2, base_channels=4)(torch.randn(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    with pytest.raises(UserError, match=r"28x28 is not divisible by 2\*\*num_blocks = 8.*num_blocks in 1, 2"):
        UNet((1, 28, 28), num_blocks=3, base_channels=4)


def test_per_level_mask_keeps_the_concat_parameter_count_and_none_drops_it() -> None:
    concat = count(UNet((1, 32, 32), base_channels=4))
    assert count(UNet((1, 32, 32), base_channels=4, skip=[True, False, True])) == concat
    assert count(UNet((1, 32, 32), base_channels=4, skip=[False, False, False])) == concat
    assert count(UNet((1, 32, 32), base_channels=4, skip="none")) < concat


def test_masking_a_skip_changes_the_output_without_changing_the_weights() -> None:
    torch.manual_seed(0)
    knobs = dict(num_blocks=2, base_channels=4, norm="none")
    full = UNet((1, 16, 16), **knobs).eval()
    top_masked = UNet((1, 16, 16), skip=[False, True], **knobs).eval()
    all_masked = UNet((1, 16, 16), skip=[False, False], **knobs).eval()
    top_masked.load_state_dict(full.state_dict())
    all_masked.load_state_dict(full.state_dict())
    y = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(full(y), top_masked(y), atol=1e-6)
        assert not torch.allclose(top_masked(y), all_masked(y), atol=1e-6)


def test_bias_free_unet_is_positively_homogeneous_in_eval_mode() -> None:
    torch.manual_seed(0)
    shape = (3, 32, 32)
    net = warmed_up(UNet(shape, base_channels=8, norm="bias_free_batch"), shape)
    y = torch.randn(2, *shape)
    with torch.no_grad():
        out = net(y)
        for a in (0.5, 2.0):
            torch.testing.assert_close(net(a * y), a * out, rtol=1e-4, atol=1e-6)


def test_affine_batchnorm_unet_is_not_homogeneous() -> None:
    torch.manual_seed(0)
    shape = (3, 32, 32)
    net = warmed_up(UNet(shape, base_channels=8, norm="batch"), shape)
    y = torch.randn(2, *shape)
    with torch.no_grad():
        gap = (net(2.0 * y) - 2.0 * net(y)).abs().max() / net(y).abs().max()
    assert gap > 1e-2


@pytest.mark.parametrize("num_blocks", [2, 3])
def test_circular_avgpool_unet_is_equivariant_to_shifts_by_multiples_of_the_pooling(num_blocks: int) -> None:
    torch.manual_seed(0)
    shape = (1, 32, 32)
    net = warmed_up(UNet(shape, num_blocks=num_blocks, base_channels=4, padding_mode="circular"), shape)
    y = torch.randn(2, *shape)
    period = 2**num_blocks
    with torch.no_grad():
        out = net(y)
        for shift in (period, 2 * period):
            offsets = (shift, -shift)
            shifted = net(torch.roll(y, shifts=offsets, dims=(2, 3)))
            torch.testing.assert_close(shifted, torch.roll(out, shifts=offsets, dims=(2, 3)), rtol=1e-4, atol=1e-5)
        gap = (net(torch.roll(y, 1, dims=3)) - torch.roll(out, 1, dims=3)).abs().max() / out.abs().max()
    assert gap > 1e-2


@pytest.mark.parametrize("conditioning", ["per_level", "blind", "conditioned"])
def test_each_conditioning_mode_builds_a_denoiser_of_y_and_t(conditioning: str) -> None:
    torch.manual_seed(0)
    grid = make_grid(3)
    shape = (1, 16, 16)
    net = build(shape, grid, conditioning=conditioning, num_blocks=2, base_channels=4, embedding_dim=16).eval()
    y = torch.randn(2, *shape)
    low, high = grid.levels[0].float().expand(2), grid.levels[-1].float().expand(2)
    with torch.no_grad():
        out_low, out_high = net(y, low), net(y, high)
    assert out_low.shape == y.shape
    single = count(UNet(shape, num_blocks=2, base_channels=4))
    if conditioning == "per_level":
        assert isinstance(net, PerLevel) and len(net.nets) == 3
        assert count(net) == 3 * single
    if conditioning == "blind":
        assert count(net) == single
        torch.testing.assert_close(out_low, out_high)
    else:
        assert not torch.allclose(out_low, out_high)


def test_bias_free_conditioned_unet_is_homogeneous_in_y_at_fixed_t() -> None:
    torch.manual_seed(0)
    shape = (1, 16, 16)
    net = build(shape, make_grid(3), conditioning="conditioned", num_blocks=2, base_channels=4, norm="bias_free_batch")
    t = torch.full((4,), 0.5)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, *shape) + 0.5, t)
    net.eval()
    y = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(net(2.0 * y, t), 2.0 * net(y, t), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "knobs",
    [
        {"downsample": "max"},
        {"downsample": "conv"},
        {"upsample": "nearest_conv"},
        {"attention": True},
        {"attention": True, "norm": "bias_free_batch"},
        {"kernel_size": 5},
        {"norm": "group", "kernel_size": 5, "padding_mode": "reflect"},
    ],
)
def test_architecture_knobs_keep_shapes_and_change_the_network(knobs: dict) -> None:
    torch.manual_seed(0)
    shape = (3, 32, 32)
    net = UNet(shape, base_channels=8, **knobs)
    y = torch.randn(2, *shape)
    out = net(y)
    assert out.shape == y.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    baseline = UNet(shape, base_channels=8, norm=knobs.get("norm", "batch"))
    if knobs.get("downsample") != "max":  # max-pooling has no parameters
        assert count(net) != count(baseline)


def test_attention_is_bias_free_only_with_a_bias_free_norm() -> None:
    with_bias = UNet((1, 16, 16), num_blocks=2, base_channels=4, attention=True)
    without = UNet((1, 16, 16), num_blocks=2, base_channels=4, attention=True, norm="bias_free_batch")
    assert with_bias.attention.qkv.bias is not None
    assert without.attention.qkv.bias is None and without.attention.proj.bias is None


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"norm": "layer"}, r"denoiser\.norm='layer'.*batch, bias_free_batch, group, none"),
        ({"padding_mode": "mirror"}, r"denoiser\.padding_mode.*zeros, circular, reflect, replicate"),
        ({"downsample": "stride"}, r"denoiser\.downsample.*avg, max, conv"),
        ({"upsample": "bilinear"}, r"denoiser\.upsample.*transpose, nearest_conv"),
        ({"skip": "add"}, r"denoiser\.skip.*concat, none"),
        ({"skip": [True, False]}, r"denoiser\.skip has 2 entries.*num_blocks=3"),
        ({"kernel_size": 4}, r"denoiser\.kernel_size=4 is even"),
        ({"num_blocks": 0}, r"denoiser\.num_blocks=0"),
        ({"base_channels": 0}, r"denoiser\.base_channels=0"),
        ({"attention": True, "attention_heads": 3}, r"denoiser\.attention_heads=3 does not divide the 64"),
        ({"in_channels": 3}, r"denoiser\.in_channels=3 but the data has 1 channel"),
        ({"time_modulation": "gate"}, r"denoiser\.time_modulation.*film, scale, additive"),
    ],
)
def test_bad_knobs_raise_a_user_error_naming_the_knob(knobs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        UNet((1, 32, 32), **{"base_channels": 8, **knobs})


def test_bad_data_and_inputs_raise_clear_user_errors() -> None:
    with pytest.raises(UserError, match=r"needs image data of shape \(C, H, W\)"):
        UNet((64,))
    with pytest.raises(UserError, match=r"padding_mode=reflect.*only 1x1"):
        UNet((1, 16, 16), num_blocks=4, base_channels=4, padding_mode="reflect")
    grey = UNet((1, 16, 16), num_blocks=2, base_channels=4)
    with pytest.raises(UserError, match=r"built for images with 1 channel"):
        grey(torch.randn(2, 3, 16, 16))
    with pytest.raises(UserError, match=r"18x18 is not divisible"):
        grey(torch.randn(2, 1, 18, 18))
    with pytest.raises(UserError, match=r"denoiser\.fit='closed_form' is not available for unet"):
        build((1, 16, 16), make_grid(2), fit="closed_form")
    with pytest.raises(UserError, match=r"denoiser\.conditioning='noisy'"):
        build((1, 16, 16), make_grid(2), conditioning="noisy", num_blocks=2, base_channels=4)


def test_bias_free_batch_norm_starts_as_the_release_does_and_norm_init_overrides_it() -> None:
    def scales(model: nn.Module) -> torch.Tensor:
        return torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, (BiasFreeBatchNorm2d, nn.BatchNorm2d))])

    torch.manual_seed(0)
    release = scales(UNet((1, 16, 16), norm="bias_free_batch", base_channels=16))
    assert release.abs().max() <= RELEASE_SCALE_CLAMP
    assert release.std().item() == pytest.approx(RELEASE_SCALE_STD, rel=0.1)  # randn * 2/9/64 (hardly ever clamped)
    assert torch.all(scales(UNet((1, 16, 16), norm="bias_free_batch", norm_init="ones")) == 1)
    assert torch.all(scales(UNet((1, 16, 16), norm="batch")) == 1)  # the paper's BatchNorm keeps torch's start
    assert scales(UNet((1, 16, 16), norm="batch", norm_init="release")).abs().max() <= RELEASE_SCALE_CLAMP
    with pytest.raises(UserError, match="denoiser.norm_init='zeros' is not valid"):
        UNet((1, 16, 16), norm="bias_free_batch", norm_init="zeros")
