"""Issue 24, item 2: ELS with ``denoiser.tolerance``: a posterior that skips only candidates whose
weight is provably small, and reports a bound on its error that the measured error never exceeds."""

import math
from itertools import product

import pytest
import torch
import torch.nn.functional as F

from conftest import train_config
from lightning_diff.compose import build
from lightning_diff.data.images import DigitsDataModule
from lightning_diff.denoisers import local_score
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def fitted(data: torch.Tensor, levels: list[float], sizes: list[int], **knobs) -> local_score.LocalScoreDenoiser:
    machine = local_score.build(tuple(data.shape[1:]), make_grid(len(levels), levels=levels), patch_sizes=sizes,
                                **knobs)
    machine.fit_data(data)
    return machine


def definition(data: torch.Tensor, y: torch.Tensor, t: float, size: int, padding: str) -> torch.Tensor:
    """ELS in float64 from distances: each pixel's softmax of -||y_P(x) - a phi||^2 / 2t over its
    candidates (circular: the fully-inside patches; zeros: the patches at positions with the same
    zero padding), a few pixels at a time."""
    data, y = data.double(), y.double()
    _, channels, height, width = data.shape
    half, a = size // 2, math.sqrt(1 - t)
    if padding == "circular":
        queries = F.unfold(F.pad(y, (half,) * 4, mode="circular"), size).transpose(1, 2)  # (B, HW, D)
        candidates = F.unfold(data, size).transpose(1, 2).reshape(-1, channels * size * size)
        centres = data[:, :, half : height - half, half : width - half].permute(0, 2, 3, 1).reshape(-1, channels)
        same = torch.ones(height * width, candidates.shape[0], dtype=torch.bool)
    else:
        queries = F.unfold(y, size, padding=half).transpose(1, 2)
        candidates = F.unfold(data, size, padding=half).transpose(1, 2).reshape(-1, channels * size * size)
        centres = data.permute(0, 2, 3, 1).reshape(-1, channels)

        def padding_class(i: int, extent: int) -> int:
            return -1 if half <= i <= extent - 1 - half else i

        key = torch.tensor([[padding_class(r, height), padding_class(c, width)] for r, c in product(range(height), range(width))])
        same = (key[:, None] == key.repeat(data.shape[0], 1)[None]).all(dim=-1)
    out = torch.empty(y.shape[0], height * width, channels, dtype=torch.float64)
    for pixel in range(height * width):
        logits = -(queries[:, pixel, None] - a * candidates[None, same[pixel]]).pow(2).sum(dim=-1) / (2 * t)
        out[:, pixel] = torch.softmax(logits, dim=1) @ centres[same[pixel]]
    return out.transpose(1, 2).reshape(y.shape)


def digits(size: int, count: int) -> torch.Tensor:
    datamodule = DigitsDataModule(image_size=size, num_train=count, seed=0)
    datamodule.setup("fit")
    return datamodule.train_data


def noisy(clean: torch.Tensor, t: float, seed: int) -> torch.Tensor:
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    return math.sqrt(1 - t) * clean + math.sqrt(t) * noise


def check_honest(machine, data, y, t, size, padding) -> tuple[float, float]:
    """The machine's error against the float64 definition, and its reported bound (exact
    arithmetic). Float rounding comes on top: the exact machine's own error here, once for each
    machine (they sum the same weights in another order), plus 1e-6."""
    got = machine(y, torch.full((y.shape[0],), t)).double()
    bound = machine.last_error_bounds[t]
    expected = definition(data, y, t, size, padding)
    exact = local_score.build(tuple(data.shape[1:]), make_grid(1, levels=[t]), patch_sizes=size, padding=padding)
    exact.fit_data(data)
    rounding = float((exact(y, torch.full((y.shape[0],), t)).double() - expected).abs().max())
    error = float((got - expected).abs().max())
    assert error <= bound + 2 * rounding + 1e-6, (error, bound, rounding)
    return error, bound


@pytest.mark.parametrize("padding", ["circular", "zeros"])
def test_a_practical_tolerance_stays_within_1e4th_of_the_definition_and_skips_work_at_low_noise(padding):
    data = digits(12, 150)
    machine = fitted(data, [1e-3, 0.05, 0.3], [5, 5, 3], padding=padding, tolerance=1e-7)  # highest noise first
    for t, size in ((1e-3, 3), (0.05, 5), (0.3, 5)):
        error, bound = check_honest(machine, data, noisy(data[:2], t, seed=1), t, size, padding)
        assert error <= 1e-4 and bound <= 1e-5
    assert machine.last_products[0.3] <= 1.0
    machine(noisy(data[:2], 1e-3, seed=1), torch.full((2,), 1e-3))
    assert machine.last_products[1e-3] < 0.5  # most of the products are provably negligible


def two_groups(count: int, gap: float, seed: int) -> torch.Tensor:
    """Images near -gap / 2 and near +gap / 2 (half each), with small pixel noise: far-apart clusters."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.arange(count) % 2 == 0, -1.0, 1.0)
    return (signs[:, None, None, None] * gap / 2 + 0.05 * torch.randn(count, 1, 8, 8, generator=gen)).clamp(-1, 1)


@pytest.mark.parametrize("tolerance", [1e-3, 0.1, 0.5])
@pytest.mark.parametrize("padding", ["circular", "zeros"])
def test_the_reported_bound_is_never_below_the_error_on_planted_cases(tolerance, padding):
    separated = two_groups(40, 1.6, seed=2)
    repeated = torch.full((40, 1, 8, 8), -1.0)
    repeated[::4, :, 3:5, 3:5] = 1.0  # mostly background, so most patches are copies of one
    cases = [
        ("far-apart clusters", separated, noisy(separated[:2], 0.1, seed=3), 0.1),
        ("duplicate patches", repeated, noisy(repeated[:2], 0.02, seed=4), 0.02),
        # halfway between the groups: the weight splits between two far clusters
        ("equidistant query", separated, math.sqrt(1 - 0.2) * (separated[:2] + separated[1:3]) / 2, 0.2),
        ("one cluster", torch.full((40, 1, 8, 8), 0.3), noisy(torch.full((2, 1, 8, 8), 0.3), 0.1, seed=5), 0.1),
        ("very low noise", separated, noisy(separated[:2], 1e-4, seed=6), 1e-4),
        ("very high noise", separated, noisy(separated[:2], 0.99, seed=7), 0.99),
        ("noise alone", separated, torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(8)), 0.5),
    ]
    skipped = False
    for name, data, y, t in cases:
        machine = fitted(data, [t], [3], padding=padding, tolerance=tolerance)
        error, bound = check_honest(machine, data, y, t, 3, padding)
        assert bound <= tolerance * 2 * (1 + 1e-9), name  # a priori: tolerance times the range (2 here)
        skipped = skipped or machine.last_products[t] < 1
    assert skipped


def test_tolerance_zero_or_null_is_the_exact_machine():
    data = digits(8, 60)
    y = noisy(data[:3], 0.1, seed=9)
    for padding in ("circular", "zeros"):
        outputs = [fitted(data, [0.1], [3], padding=padding, tolerance=tolerance)(y, torch.full((3,), 0.1))
                   for tolerance in (None, 0, 0.0)]
        assert all(torch.equal(outputs[0], out) for out in outputs[1:])
        torch.testing.assert_close(outputs[0].double(), definition(data, y, 0.1, 3, padding), atol=1e-5, rtol=0)


def test_a_bad_tolerance_is_one_user_error_naming_the_key():
    shape, grid = (1, 8, 8), make_grid(2)
    for bad in (-1e-3, 1.0, 2, True, "small"):
        with pytest.raises(UserError, match=r"denoiser\.tolerance=.* is not valid; give the posterior weight"):
            local_score.build(shape, grid, tolerance=bad)


def test_the_config_key_reaches_the_machine_and_bad_values_are_refused(tmp_path):
    def machine(*overrides: str):
        config = train_config(tmp_path, "data=digits", "denoiser=local_score", "diffusion.num_levels=3", *overrides)
        return build(config.denoiser, "denoiser", data_shape=(1, 8, 8), grid=make_grid(3))

    assert machine().tolerance == 0.0  # null in conf/denoiser/local_score.yaml: exact
    assert machine("denoiser.tolerance=1e-7").tolerance == 1e-7
    with pytest.raises(UserError, match=r"denoiser\.tolerance"):
        machine("denoiser.tolerance=-0.5")
    with pytest.raises(UserError, match=r"denoiser\.tolerance"):
        machine("denoiser.tolerance=small")
