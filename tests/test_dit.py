"""The DiT family: shapes per conditioning mode, noise dependence, adaLN-Zero, training, errors."""

import pytest
import torch
from torch import nn

from lightning_diff.compose import build as compose_build
from lightning_diff.denoisers.conditioning import Blind, Conditioned, PerLevel
from lightning_diff.denoisers.dit import DiT, build
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.diffusion.process import add_noise
from lightning_diff.errors import UserError
from lightning_diff.seeding import generator

GRID = make_grid(4)
SMALL = dict(patch_size=2, depth=2, width=32, heads=2, mlp_ratio=2.0)
MODES = ("conditioned", "per_level", "blind")
SHAPES = ((1, 16, 16), (3, 8, 8))


def _levels(batch: int) -> torch.Tensor:
    return GRID.levels.float()[torch.arange(batch) % len(GRID)]


def _scramble(module: nn.Module, seed: int = 0) -> None:
    """Give every parameter random values, so nothing is hidden behind the zero initialisation."""
    gen = generator(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=gen))


def _dits(denoiser: nn.Module) -> list[DiT]:
    return [m for m in denoiser.modules() if isinstance(m, DiT)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_output_has_the_data_shape_in_every_mode(mode: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    denoiser = build(shape, GRID, conditioning=mode, **SMALL)
    _scramble(denoiser)
    y = torch.randn(5, *shape, generator=generator(1))
    out = denoiser(y, _levels(5))
    assert out.shape == (5, *shape)
    assert torch.isfinite(out).all()


def test_modes_build_the_right_networks() -> None:
    per_level = build((1, 8, 8), GRID, conditioning="per_level", **SMALL)
    assert isinstance(per_level, PerLevel)
    assert len(per_level.nets) == len(GRID)
    assert all(isinstance(net, DiT) and net.time_embedding is None for net in per_level.nets)
    # Distinct modules, not one network shared K times.
    assert len({id(net) for net in per_level.nets}) == len(GRID)
    blind = build((1, 8, 8), GRID, conditioning="blind", **SMALL)
    assert isinstance(blind, Blind) and blind.net.time_embedding is None
    conditioned = build((1, 8, 8), GRID, conditioning="conditioned", **SMALL)
    assert isinstance(conditioned, Conditioned) and isinstance(conditioned.net, DiT)
    assert conditioned.net.time_embedding is not None and conditioned.net.constant is None


def test_conditioned_output_depends_on_t_and_blind_does_not() -> None:
    y = torch.randn(1, 1, 16, 16, generator=generator(2)).expand(2, -1, -1, -1)
    t = GRID.levels.float()[[0, -1]]
    for mode, depends in (("conditioned", True), ("blind", False)):
        torch.manual_seed(0)
        denoiser = build((1, 16, 16), GRID, conditioning=mode, **SMALL)
        _scramble(denoiser)
        out = denoiser(y, t)
        gap = (out[0] - out[1]).abs().max().item()
        assert (gap > 1e-3) if depends else (gap == 0.0), (mode, gap)


@pytest.mark.parametrize("mode", MODES)
def test_adaln_zero_makes_fresh_blocks_the_identity(mode: str) -> None:
    torch.manual_seed(0)
    denoiser = build((3, 8, 8), GRID, conditioning=mode, **SMALL)
    y = torch.randn(4, 3, 8, 8, generator=generator(3))
    t = _levels(4)
    # Zero output projection: the first prediction is x0_hat = 0.
    assert denoiser(y, t).abs().max().item() == 0.0
    for net in _dits(denoiser):
        tokens = torch.randn(4, 16, 32, generator=generator(4))
        c = torch.randn(4, 32, generator=generator(5))
        for block in net.blocks:
            torch.testing.assert_close(block(tokens, c), tokens, rtol=0, atol=0)
        # With a non-zero final layer, the whole network is that layer applied to the embedding.
        _scramble(net.final)
        c = net.conditioning_vector(4, None if net.time_embedding is None else t)
        expected = net.unpatchify(net.final(net.embed(y), c))
        torch.testing.assert_close(net(y, t) if net.time_embedding is not None else net(y), expected)
        assert expected.abs().max().item() > 0.0


def test_fresh_network_maps_each_patch_to_the_same_patch() -> None:
    # Identity blocks do not mix tokens, so a change inside one input patch may only change the
    # output patch at the same place: this ties the token order of the embedding to unpatchify.
    torch.manual_seed(0)
    net = build((2, 4, 8), GRID, conditioning="blind", patch_size=2, depth=2, width=16, heads=2).net
    _scramble(net.final)
    y = torch.randn(1, 2, 4, 8, generator=generator(9))
    bumped = y.clone()
    bumped[0, 1, 0, 3] += 1.0  # inside patch (row 0, column 1) of the 2x4 patch grid
    changed = (net(bumped) - net(y)).abs().sum(dim=(0, 1)) > 0
    expected = torch.zeros(4, 8, dtype=torch.bool)
    expected[0:2, 2:4] = True
    assert torch.equal(changed, expected)


def test_unpatchify_puts_each_token_on_its_patch() -> None:
    channels, height, width, p = 3, 4, 6, 2
    net = DiT((channels, height, width), p, 1, 8, 2, 1.0, "sincos", time_conditioned=False)
    tokens = torch.arange(6 * channels * p * p, dtype=torch.float32).reshape(1, 6, channels * p * p)
    image = net.unpatchify(tokens)[0]
    for row in range(height // p):
        for col in range(width // p):
            patch = tokens[0, row * (width // p) + col].reshape(channels, p, p)
            torch.testing.assert_close(image[:, row * p : (row + 1) * p, col * p : (col + 1) * p], patch)


def test_position_embedding_is_fixed_or_learned() -> None:
    fixed = build((1, 8, 8), GRID, conditioning="blind", pos_embed="sincos", **SMALL).net
    learned = build((1, 8, 8), GRID, conditioning="blind", pos_embed="learned", **SMALL).net
    assert not any(param is fixed.pos_embed for param in fixed.parameters())
    assert any(param is learned.pos_embed for param in learned.parameters())
    assert fixed.pos_embed.shape == learned.pos_embed.shape == (1, 16, 32)
    # Tokens of different positions get different embeddings.
    assert torch.unique(fixed.pos_embed[0], dim=0).shape[0] == 16


def test_sincos_embedding_follows_the_row_major_token_order() -> None:
    # On a 2x4 patch grid, timm lays out the 16 features as [sin row, sin col, cos row, cos col],
    # four each: the row features must be constant along a row, the column features down a column.
    net = DiT((1, 4, 8), 2, 1, 16, 2, 1.0, "sincos", time_conditioned=False)
    table = net.pos_embed.reshape(2, 4, 4, 4)
    rows, cols = table[..., 0::2, :], table[..., 1::2, :]
    torch.testing.assert_close(rows, rows[:, :1].expand_as(rows))
    torch.testing.assert_close(cols, cols[:1].expand_as(cols))
    assert not torch.allclose(rows[0], rows[1]) and not torch.allclose(cols[:, 0], cols[:, 1])


@pytest.mark.parametrize("mode", MODES)
def test_adam_steps_reduce_the_x0_error_on_a_fixed_batch(mode: str) -> None:
    torch.manual_seed(0)
    denoiser = build((1, 8, 8), GRID, conditioning=mode, **SMALL)
    gen = generator(6)
    # Smooth images (a ramp with a random slope and offset), so there is structure to learn.
    ramp = torch.linspace(-1, 1, 8)
    slope, offset = torch.rand(2, 16, 1, 1, 1, generator=gen)
    x0 = (slope * ramp.reshape(1, 1, 1, 8) + 0.5 * offset).expand(-1, -1, 8, -1).contiguous()
    t = _levels(16)
    y = add_noise(x0, t, torch.randn(x0.shape, generator=gen))
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return ((denoiser(y, t) - x0) ** 2).mean()

    start = loss().item()
    for _ in range(25):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.5 * start


def test_every_parameter_learns_within_three_steps() -> None:
    # adaLN-Zero delays gradients (output layer first, then gates, then the rest); none may stay dead.
    torch.manual_seed(0)
    for mode in ("conditioned", "blind"):
        denoiser = build((1, 8, 8), GRID, conditioning=mode, pos_embed="learned", **SMALL)
        before = {name: param.detach().clone() for name, param in denoiser.named_parameters()}
        optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
        x0 = torch.rand(8, 1, 8, 8, generator=generator(7)) * 2 - 1
        t = _levels(8)
        y = add_noise(x0, t, torch.randn(x0.shape, generator=generator(8)))
        for _ in range(3):
            optimizer.zero_grad()
            ((denoiser(y, t) - x0) ** 2).mean().backward()
            optimizer.step()
        frozen = [name for name, param in denoiser.named_parameters() if torch.equal(param, before[name])]
        assert not frozen, (mode, frozen)


def test_indivisible_image_size_names_the_patch_sizes_that_work() -> None:
    with pytest.raises(UserError, match=r"28x28.*patch_size=3.*1, 2, 4, 7, 14, 28"):
        build((1, 28, 28), GRID, patch_size=3)
    with pytest.raises(UserError, match=r"16x12.*1, 2, 4\b"):
        build((1, 16, 12), GRID, patch_size=8)


def test_width_not_divisible_by_heads_is_rejected() -> None:
    with pytest.raises(UserError, match=r"width=130.*heads=4.*1, 2, 5, 10, 13.*128 or 132"):
        build((1, 8, 8), GRID, width=130, heads=4)


@pytest.mark.parametrize("shape", [(64,), (8, 8), (1, 1, 8, 8)])
def test_non_image_data_is_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(UserError, match=r"\(channels, height, width\)"):
        build(shape, GRID)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"conditioning": "sometimes"}, "per_level, conditioned, blind"),
        ({"fit": "closed_form"}, "SGD only"),
        ({"pos_embed": "rope"}, "sincos, learned"),
        ({"width": 34, "heads": 2}, "multiple of 4"),
        ({"depth": 0}, "depth=0"),
        ({"patch_size": 0}, "patch_size=0"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ],
)
def test_other_bad_knobs_are_rejected(overrides: dict, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern):
        build((1, 8, 8), GRID, **overrides)


def test_a_key_of_another_family_is_named_when_composed() -> None:
    spec = {"_target_": "lightning_diff.denoisers.dit.build", "conditioning": "blind", "rank": 3, **SMALL}
    with pytest.raises(UserError, match=r"denoiser\.rank: not a setting of .*dit\.build.*valid settings: .*patch_size"):
        compose_build(spec, "denoiser", data_shape=(1, 8, 8), grid=GRID)
