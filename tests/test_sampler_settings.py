"""Issue 23: samplers are objects with settings (DDIM's eta); the config's sampler node carries
them; a setting a sampler lacks, or a bad value, is one clear error. Their equality with the
published implementations is tests/test_sampler_references.py."""

import math

import pytest
import torch

from conftest import train_config
from lightning_diff.compose import build
from lightning_diff.denoisers.linear import WienerDenoiser
from lightning_diff.diffusion.draw import draw_samples
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.diffusion.samplers import DDIM, DDPM, Heun, make_sampler
from lightning_diff.errors import UserError
from lightning_diff.seeding import sample_seeds

GRID = make_grid(10)
SEEDS = sample_seeds(5, 16)


@pytest.fixture(scope="module")
def wiener() -> WienerDenoiser:
    gen = torch.Generator().manual_seed(0)
    denoiser = WienerDenoiser((4,))
    denoiser.fit_data(torch.randn(200, 4, generator=gen) * torch.tensor([1.0, 0.5, 0.2, 0.1]))
    return denoiser.eval()


def test_make_sampler_builds_each_sampler_with_its_settings():
    assert isinstance(make_sampler("ddim"), DDIM) and make_sampler("ddim").eta == 0.0
    assert make_sampler("ddim", eta=0.4).settings() == {"eta": 0.4}
    assert repr(make_sampler("ddim", eta=1)) == "DDIM(eta=1.0)"
    assert isinstance(make_sampler("ddpm"), DDPM) and isinstance(make_sampler("heun"), Heun)
    assert make_sampler("heun").settings() == {}


@pytest.mark.parametrize(
    ("name", "settings", "valid"),
    [("ddim", {"etta": 0.5}, "valid settings: eta, batch_size"), ("ddpm", {"eta": 0.5}, "valid settings: batch_size"),
     ("heun", {"eta": 0.0, "churn": 1.0}, "valid settings: batch_size")],
)
def test_a_setting_the_sampler_lacks_is_one_error_listing_the_valid_ones(name, settings, valid):
    with pytest.raises(UserError, match=f"not a setting of the {name} sampler; {valid}") as caught:
        make_sampler(name, **settings)
    assert all(f"sampler.{key}" in str(caught.value) for key in settings)


@pytest.mark.parametrize("eta", [-0.1, 1.5, math.nan, True, "0.5", None])
def test_eta_outside_0_to_1_is_refused(eta):
    with pytest.raises(UserError, match=r"sampler\.eta=.* is not valid: DDIM's noise scale, a number in \[0, 1\]"):
        DDIM(eta=eta)


def test_the_config_node_carries_eta_to_the_sampler(tmp_path):
    default = build(train_config(tmp_path).sampler, "sampler")
    assert isinstance(default, DDIM) and repr(default) == "DDIM(eta=0.0)" and default.batch_size == 256
    assert build(train_config(tmp_path, "sampler.eta=0.25").sampler, "sampler").eta == 0.25
    assert build(train_config(tmp_path, "sampler.batch_size=8").sampler, "sampler").batch_size == 8
    assert isinstance(build(train_config(tmp_path, "sampler=ddpm").sampler, "sampler"), DDPM)
    with pytest.raises(UserError, match="sampler.eta: not a setting of lightning_diff.diffusion.samplers.Heun"):
        build(train_config(tmp_path, "sampler=heun", "+sampler.eta=0.5").sampler, "sampler")
    with pytest.raises(UserError, match=r"sampler\.eta=2\.0 is not valid"):
        build(train_config(tmp_path, "sampler.eta=2.0").sampler, "sampler")


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_with_eta_gives_sample_i_whatever_the_batch_size(wiener, eta):
    whole = DDIM(eta=eta).sample(wiener, GRID, (4,), SEEDS, batch_size=16)
    pieces = DDIM(eta=eta).sample(wiener, GRID, (4,), SEEDS, batch_size=5)
    assert torch.allclose(whole, pieces, rtol=0, atol=1e-6)
    assert not torch.allclose(whole, DDIM().sample(wiener, GRID, (4,), SEEDS), atol=1e-2)


def test_draw_samples_takes_a_sampler_object_with_its_settings(wiener):
    common = {"batch_size": 16, "is_image": False}
    noisy = draw_samples(wiener, GRID, (4,), SEEDS, sampler=DDIM(eta=0.5), **common)
    assert torch.equal(noisy, DDIM(eta=0.5).sample(wiener, GRID, (4,), SEEDS))
    plain = draw_samples(wiener, GRID, (4,), SEEDS, sampler=DDIM(), **common)
    assert torch.equal(plain, DDIM().sample(wiener, GRID, (4,), SEEDS))
    assert not torch.allclose(noisy, plain, atol=1e-2)
    # The sampler's own batch size is the default, and changes no sample.
    assert torch.allclose(draw_samples(wiener, GRID, (4,), SEEDS, sampler=DDIM(batch_size=3), is_image=False), plain,
                          rtol=0, atol=1e-6)
