"""Issue 23: our samplers equal published implementations on the same levels and the same noise.

- ``ddim`` (eta = 0 and eta > 0) against a loop over diffusers' ``DDIMScheduler.step``;
- ``ddpm`` against a loop over diffusers' ``DDPMScheduler.step`` (variance_type "fixed_small");
- ``heun`` against k-diffusion's ``sample_heun``.

Each is checked through a small random-weight ``diffusers.UNet2DModel``, adopted as our denoiser
by the ``diffusers_unet`` family (``from_diffusers``; for every prediction type a scheduler knows;
in float64, see :func:`float64`), and on two analytic denoisers (the Wiener denoiser of a Gaussian and
the empirical denoiser of a few points), so the equivalence rests on no single network. The
loops below are the ones diffusers' DDIMPipeline and DDPMPipeline run, less their final
rescaling and clamping to [0, 1] for display.

The same noise: diffusers draws its starting noise and per-step noise with ``randn_tensor``,
which, given a list of generators, draws row i from generator i. We give it the generators our
sampler makes (``seeding.generator(seed)`` per sample), and our samplers draw from each in the
same order (starting noise, then one draw per step but the last), so both see the same numbers
without either being handed a tensor.

The same levels: a scheduler's level at timestep tau is t = 1 - alphas_cumprod[tau], so our grid
is those of its timesteps. Diffusers' DDIM goes from tau to tau - 1000 // steps, not to the next
timestep of its list: the two agree for the "leading" and "trailing" spacings used here only
when the number of steps divides 1000 (with 6 "trailing" steps it goes 999 -> 833 while its list
says 832).

The same final quantity: our samplers return the last denoiser output (x0_hat at the smallest
level). Diffusers' DDIM with ``set_alpha_to_one=True`` steps the last timestep to alpha_bar = 1,
where its step result sqrt(1) x0_hat + sqrt(0) eps is that x0_hat; DDPM's last timestep (0 in
"leading" spacing) has prev alpha_bar = 1 too, coefficients 1 and 0 and no noise; k-diffusion's
last step, Euler from the smallest sigma to sigma = 0, gives x + (x - D) / sigma * (0 - sigma) =
D, the last denoiser output. So the final tensors of both are compared directly.

k-diffusion's package imports clip, kornia, scikit-image, wandb... in its ``__init__``; its
``sampling.py`` and ``external.py`` need only torch, scipy, torchdiffeq, torchsde, tqdm and
``utils.append_dims``. :func:`k_diffusion_modules` loads those two files from the installed
distribution under a private package name whose ``utils`` is a stand-in holding that helper.
"""

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from conftest import diffusers_loop
from lightning_diff.denoisers.diffusers_unet import from_diffusers
from lightning_diff.denoisers.empirical import EmpiricalDenoiser
from lightning_diff.denoisers.linear import WienerDenoiser
from lightning_diff.diffusion.grids import NoiseGrid, make_grid
from lightning_diff.diffusion.process import sigma_to_t, t_to_sigma
from lightning_diff.diffusion.samplers import DDIM, DDPM, make_sampler
from lightning_diff.seeding import generator, sample_seeds

SEEDS = sample_seeds(23, 3)
IMAGE = (3, 8, 8)
VECTOR = (16,)
STEPS = 8  # divides 1000: see the module docstring
TOLERANCE = 1e-5  # max |ours - theirs| relative to max |theirs|

pytestmark = pytest.mark.usefixtures("one_thread")


def relative_difference(ours: Tensor, theirs: Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


# ---------------------------------------------------------------- the models


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = UNet2DModel(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        )
    return model.double().eval()


@pytest.fixture
def float64() -> Iterator[None]:
    """Both sides in float64 (noise, levels, network). A random network's epsilon is no prediction
    of the noise actually in y, so x0 = (y - sqrt(t) eps) / sqrt(1 - t) near t = 1 divides a
    cancellation by sqrt(1 - t) (down to 0.006 here): in float32 the two implementations'
    equivalent but differently ordered arithmetic then differs by up to 8e-5 relative (v and
    sample predictions: 2e-6). In float64 what remains is our final cast of the samples to float32."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def network(unet: UNet2DModel) -> Callable[[Tensor, Tensor], Tensor]:
    """The UNet as a plain function of (input, integer timestep)."""
    return lambda y, tau: unet(y, tau).sample


def scheduler_grid(scheduler) -> NoiseGrid:
    """Our grid for a scheduler's timesteps: t = 1 - alphas_cumprod there, ascending."""
    return NoiseGrid(1 - scheduler.alphas_cumprod[scheduler.timesteps.flip(0)].double())


@pytest.fixture(scope="module")
def gaussian_points() -> Tensor:
    """32 points in 16 dimensions, variances log-spaced over two decades around mean 0.5."""
    gen = torch.Generator().manual_seed(1)
    return 0.5 + torch.randn(32, 16, generator=gen) * torch.logspace(0, -1, 16)


@pytest.fixture(scope="module", params=["wiener", "empirical"])
def analytic(request, gaussian_points) -> Callable[[Tensor, Tensor], Tensor]:
    """The affine optimum of the points' Gaussian, or the memorizer of the points drawn ten times
    closer together: close enough that at the smallest levels used here (t ~ 0.01) its posterior
    still mixes several points, so the last output depends on the whole path and is no training
    point that any path near it would end on as well."""
    if request.param == "wiener":
        denoiser, data = WienerDenoiser(VECTOR), gaussian_points
    else:
        denoiser, data = EmpiricalDenoiser(VECTOR), 0.5 + 0.1 * (gaussian_points - 0.5)
    denoiser.fit_data(data)
    return denoiser.eval()


# ---------------------------------------------------------------- the reference loops


def generators() -> list[torch.Generator]:
    return [generator(seed) for seed in SEEDS]


def scheduler_loop(scheduler, model: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, ...], **step) -> Tensor:
    """DDIMPipeline's / DDPMPipeline's loop, fed our per-sample generators."""
    return diffusers_loop(scheduler, model, shape, SEEDS, **step)


def ddim_scheduler(prediction: str = "sample", **config) -> DDIMScheduler:
    scheduler = DDIMScheduler(prediction_type=prediction, clip_sample=False, set_alpha_to_one=True, **config)
    scheduler.set_timesteps(STEPS)
    return scheduler


def ddpm_scheduler(prediction: str = "sample", timesteps: list[int] | None = None, **config) -> DDPMScheduler:
    scheduler = DDPMScheduler(prediction_type=prediction, variance_type="fixed_small", clip_sample=False, **config)
    scheduler.set_timesteps(None if timesteps else STEPS, timesteps=timesteps)
    return scheduler


def as_scheduler_model(denoiser: Callable[[Tensor, Tensor], Tensor], alphas_cumprod: Tensor):
    """An x0 denoiser as a "sample"-predicting model of timestep tau."""
    return lambda y, tau: denoiser(y, torch.full((y.shape[0],), 1 - float(alphas_cumprod[tau].double())))


def ours(sampler, denoiser, grid: NoiseGrid, shape: tuple[int, ...]) -> Tensor:
    return sampler.sample(denoiser, grid, shape, SEEDS, batch_size=len(SEEDS))


def k_diffusion_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """k-diffusion's ``sampling`` and ``external`` modules, loaded without its package ``__init__``
    (see the module docstring): a private package over the installed files, with a stand-in ``utils``."""
    installed = importlib.util.find_spec("k_diffusion")
    assert installed is not None, "k-diffusion is not installed: pip install --no-deps k-diffusion (see pyproject's test extra)"
    name = "_k_diffusion_reference"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = list(installed.submodule_search_locations)
        utils = types.ModuleType(f"{name}.utils")
        utils.append_dims = lambda x, target_dims: x[(...,) + (None,) * (target_dims - x.ndim)]
        package.utils = utils
        sys.modules[name], sys.modules[utils.__name__] = package, utils
    return importlib.import_module(f"{name}.sampling"), importlib.import_module(f"{name}.external")


# ---------------------------------------------------------------- through a diffusers UNet


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ddim_through_an_adopted_unet_equals_diffusers_ddim(unet, prediction):
    """Final tensors compared (see the module docstring): our x0_hat, diffusers' last step result."""
    scheduler = ddim_scheduler(prediction)
    denoiser = from_diffusers(unet, scheduler)
    theirs = scheduler_loop(scheduler, network(unet), IMAGE)
    mine = ours(make_sampler("ddim"), denoiser, denoiser.grid(), IMAGE)
    assert relative_difference(mine, theirs) <= TOLERANCE


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_with_eta_equals_diffusers_ddim_given_the_same_noise(unet, eta):
    scheduler = ddim_scheduler("epsilon", timestep_spacing="trailing")
    denoiser = from_diffusers(unet, scheduler)
    grid = denoiser.grid()
    theirs = scheduler_loop(scheduler, network(unet), IMAGE, eta=eta)
    mine = ours(DDIM(eta=eta), denoiser, grid, IMAGE)
    assert relative_difference(mine, theirs) <= TOLERANCE
    # The per-step noise matters: without it the result is far from both.
    assert relative_difference(ours(DDIM(), denoiser, grid, IMAGE), theirs) > 0.01


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ddpm_through_an_adopted_unet_equals_diffusers_ddpm(unet, prediction):
    scheduler = ddpm_scheduler(prediction)
    denoiser = from_diffusers(unet, scheduler)
    theirs = scheduler_loop(scheduler, network(unet), IMAGE)
    mine = ours(make_sampler("ddpm"), denoiser, denoiser.grid(), IMAGE)
    assert relative_difference(mine, theirs) <= TOLERANCE


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_heun_through_an_adopted_unet_equals_k_diffusion_sample_heun(unet, prediction):
    """k-diffusion adopts the UNet with its own wrappers (DiscreteEpsDDPMDenoiser, DiscreteVDDPMDenoiser)
    and samples in Karras coordinates x = y / sqrt(1 - t) on sigmas sqrt(t / (1 - t)) of the same
    timesteps, then 0. Its start x = noise * sqrt(1 + sigma_max^2) is our y = noise scaled to x."""
    sampling, external = k_diffusion_modules()
    scheduler = ddpm_scheduler(prediction, timesteps=[999, 800, 600, 400, 200, 50, 0])
    wrapper = external.DiscreteEpsDDPMDenoiser if prediction == "epsilon" else external.DiscreteVDDPMDenoiser
    model = wrapper(network(unet), scheduler.alphas_cumprod, quantize=True)
    denoiser = from_diffusers(unet, scheduler)
    sigmas = sampling.append_zero(model.sigmas[scheduler.timesteps])
    start = randn_tensor((len(SEEDS), *IMAGE), generator=generators()) * (1 + sigmas[0] ** 2).sqrt()
    with torch.no_grad():
        theirs = sampling.sample_heun(model, start, sigmas, disable=True)
    mine = ours(make_sampler("heun"), denoiser, denoiser.grid(), IMAGE)
    assert relative_difference(mine, theirs) <= TOLERANCE


# ---------------------------------------------------------------- on analytic denoisers


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_on_analytic_denoisers_equals_diffusers_ddim(analytic, eta):
    scheduler = ddim_scheduler(beta_schedule="scaled_linear", timestep_spacing="trailing")
    grid = scheduler_grid(scheduler)
    theirs = scheduler_loop(scheduler, as_scheduler_model(analytic, scheduler.alphas_cumprod), VECTOR, eta=eta)
    assert relative_difference(ours(DDIM(eta=eta), analytic, grid, VECTOR), theirs) <= TOLERANCE


def test_ddpm_on_analytic_denoisers_equals_diffusers_ddpm(analytic):
    """On uneven custom timesteps, so each step's own posterior is checked. The last one is 60
    (t = 0.011), not 0: diffusers then adds 1e-10 times a last noise draw (its variance 0 clamped
    to 1e-20), far below the tolerance, and our sampler returns x0_hat there."""
    scheduler = ddpm_scheduler(timesteps=[990, 700, 420, 260, 150, 90, 60], beta_schedule="squaredcos_cap_v2")
    grid = scheduler_grid(scheduler)
    theirs = scheduler_loop(scheduler, as_scheduler_model(analytic, scheduler.alphas_cumprod), VECTOR)
    assert relative_difference(ours(make_sampler("ddpm"), analytic, grid, VECTOR), theirs) <= TOLERANCE


def test_heun_on_analytic_denoisers_equals_k_diffusion_sample_heun(analytic):
    """On k-diffusion's own Karras sigmas; its denoiser is ours in VE coordinates, D_ve(x, sigma) =
    D(x / sqrt(1 + sigma^2), sigma^2 / (1 + sigma^2)), with t computed in float64."""
    sampling, _ = k_diffusion_modules()
    sigmas = sampling.get_sigmas_karras(STEPS, 0.1, 80.0)
    grid = NoiseGrid(sigma_to_t(sigmas[:-1].double()).flip(0))

    def ve_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        t = sigma_to_t(sigma.double())
        return analytic(x * (1 - t).sqrt().float().reshape(-1, 1), t.float())

    start = randn_tensor((len(SEEDS), *VECTOR), generator=generators()) * (1 + sigmas[0] ** 2).sqrt()
    with torch.no_grad():
        theirs = sampling.sample_heun(ve_denoiser, start, sigmas, disable=True)
    assert relative_difference(ours(make_sampler("heun"), analytic, grid, VECTOR), theirs) <= TOLERANCE
    assert torch.allclose(t_to_sigma(grid.levels).flip(0).float(), sigmas[:-1])


# ---------------------------------------------------------------- between our own samplers


def test_ddim_with_eta_one_is_ddpm(analytic):
    """Song et al. 2021: eta = 1 gives DDPM's posterior; both draw the same per-step noise."""
    grid = make_grid(STEPS, "cosine", t_min=0.01)
    assert relative_difference(ours(DDIM(eta=1.0), analytic, grid, VECTOR), ours(DDPM(), analytic, grid, VECTOR)) <= TOLERANCE
