"""Issue 23 (1): a diffusers model trained elsewhere becomes a run directory (``adopt``).

Tiny random-weight ``UNet2DModel``s are saved as diffusers saves them (a pipeline folder, or a bare
UNet folder plus a scheduler config) and adopted. The adopted run's denoiser, sampled with our
samplers through ``TrainedRun``, must equal diffusers' own scheduler loops from the same noise
(see tests/test_sampler_references.py for why the final tensors compare directly, and
:func:`conftest.diffusers_loop` for the same noise). Those comparisons run in float64: a random
network's epsilon is no prediction of the noise in y, so near t = 1 the conversion to x0 divides a
cancellation by sqrt(1 - t) and float32 orderings differ by up to 8e-5. K = 10 divides the 1000
training timesteps, so diffusers' DDIM steps to the next timestep of its list, as ours does.
"""

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, ScoreSdeVeScheduler, UNet2DModel
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import Tensor

from conftest import diffusers_loop, run_module
from lightning_diff.adopt import adopt
from lightning_diff.denoisers import diffusers_unet
from lightning_diff.denoisers.diffusers_unet import from_diffusers
from lightning_diff.diffusion.draw import draw_samples
from lightning_diff.diffusion.grids import NoiseGrid, make_grid
from lightning_diff.diffusion.samplers import make_sampler
from lightning_diff.errors import UserError
from lightning_diff.run.checkpoint import CONFIG_KEY, load_checkpoint
from lightning_diff.run.cli import CONF_DIR, exit_on_user_error
from lightning_diff.run.study import read_run_dir
from lightning_diff.seeding import sample_seeds
from lightning_diff.trained import TrainedRun

IMAGE = (3, 8, 8)
STEPS = 10
COUNT = 4
TOLERANCE = 1e-5  # max |ours - theirs| relative to max |theirs|

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(**config) -> UNet2DModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return UNet2DModel(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4, **config,
        ).eval()


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return tiny_unet()


def save_pipeline(folder: Path, unet: UNet2DModel, scheduler) -> Path:
    """As DDIMPipeline / DDPMPipeline save themselves: model_index.json, unet/, scheduler/."""
    pipeline = DDIMPipeline if isinstance(scheduler, DDIMScheduler) else DDPMPipeline
    pipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def save_bare(folder: Path, unet: UNet2DModel, scheduler) -> tuple[Path, Path]:
    """A UNet2DModel folder and, beside it, a scheduler folder (scheduler_config.json)."""
    unet.save_pretrained(folder / "unet_only")
    scheduler.save_pretrained(folder / "scheduler_only")
    return folder / "unet_only", folder / "scheduler_only"


def adopt_config(*overrides: str) -> DictConfig:
    base = [f"num_inference_steps={STEPS}", f"num_samples={COUNT}", "progress=false"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("adopt", overrides=base + list(overrides))


def adopted(path: Path, out: Path, *overrides: str) -> dict:
    """``adopt path=... out=...`` in process; the run.json payload."""
    return adopt(adopt_config(f"path={path}", f"out={out}", *overrides))


@contextmanager
def float64() -> Iterator[None]:
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)


def relative_difference(ours: Tensor, theirs: Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def ours_from_the_run(run: Path, sampler: str) -> Tensor:
    """The run's denoiser as every entry point loads it, sampled in float64 on its stored grid from its
    seeds; not clipped to [-1, 1] (a random network's samples would be all +-1)."""
    trained = TrainedRun.load(run)
    seeds = sample_seeds(trained.config["sample_seed"], COUNT)
    with float64():
        return draw_samples(trained.denoiser.double(), trained.grid, trained.data_shape, seeds,
                            sampler=make_sampler(sampler, batch_size=COUNT), is_image=False)


def theirs(unet_folder: Path, scheduler, **step) -> Tensor:
    """Diffusers' loop through the saved UNet, in float64, from the run's seeds."""
    with float64():
        model = UNet2DModel.from_pretrained(unet_folder, low_cpu_mem_usage=False).double().eval()
        scheduler.set_timesteps(STEPS)
        return diffusers_loop(scheduler, lambda y, tau: model(y, tau).sample, IMAGE, sample_seeds(0, COUNT), **step)


# ---------------------------------------------------------------- equal to diffusers' loops


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_our_ddim_through_an_adopted_pipeline_equals_diffusers_ddim(tmp_path, unet, prediction):
    folder = save_pipeline(tmp_path / "model", unet, DDIMScheduler(prediction_type=prediction, clip_sample=False))
    adopted(folder, tmp_path / "run")
    reference = theirs(folder / "unet", DDIMScheduler.from_pretrained(folder / "scheduler"))
    assert relative_difference(ours_from_the_run(tmp_path / "run", "ddim"), reference) <= TOLERANCE


def test_our_ddpm_through_an_adopted_unet_folder_equals_diffusers_ddpm(tmp_path, unet):
    """A bare UNet folder with the scheduler's config file named by scheduler=."""
    scheduler = DDPMScheduler(prediction_type="epsilon", clip_sample=False)
    unet_folder, scheduler_folder = save_bare(tmp_path, unet, scheduler)
    adopted(unet_folder, tmp_path / "run", f"scheduler={scheduler_folder / 'scheduler_config.json'}")
    reference = theirs(unet_folder, DDPMScheduler.from_pretrained(scheduler_folder))
    assert relative_difference(ours_from_the_run(tmp_path / "run", "ddpm"), reference) <= TOLERANCE


@pytest.mark.parametrize(
    "limit",
    [
        {"clip_sample": True, "clip_sample_range": 0.5},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    ],
    ids=["clip_sample", "thresholding"],
)
def test_clipping_and_thresholding_are_the_schedulers(tmp_path, unet, limit):
    """DDPM equals diffusers' DDPM step (its posterior mean takes the limited x0); DDIM equals
    diffusers' DDIM with use_clipped_model_output=True (its direction is re-derived from that x0)."""
    config = {"prediction_type": "epsilon", "clip_sample": False, **limit}
    folder = save_pipeline(tmp_path / "model", unet, DDPMScheduler(**config))
    adopted(folder, tmp_path / "run")
    ddpm = theirs(folder / "unet", DDPMScheduler.from_pretrained(folder / "scheduler"))
    assert relative_difference(ours_from_the_run(tmp_path / "run", "ddpm"), ddpm) <= TOLERANCE
    as_ddim = DDIMScheduler.from_config(DDPMScheduler(**config).config)
    ddim = theirs(folder / "unet", as_ddim, use_clipped_model_output=True)
    assert relative_difference(ours_from_the_run(tmp_path / "run", "ddim"), ddim) <= TOLERANCE

    unlimited = DDPMScheduler(prediction_type="epsilon", clip_sample=False)
    unlimited.set_timesteps(STEPS)
    grid = TrainedRun.load(tmp_path / "run").grid
    plain = draw_samples(from_diffusers(unet, unlimited), grid, IMAGE, sample_seeds(0, COUNT),
                         sampler=make_sampler("ddpm", batch_size=COUNT), is_image=False)
    assert relative_difference(plain, ddpm) > 0.01  # the limit matters here


# ---------------------------------------------------------------- the run directory


def test_the_run_directory_is_one_every_entry_point_reads(tmp_path, unet):
    folder = save_pipeline(tmp_path / "my_model", unet, DDIMScheduler(prediction_type="v_prediction"))
    summary = adopted(folder, tmp_path / "run", "data=digits", "data.channels=3", "sample_seed=7")
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text()) == json.loads(json.dumps(summary, default=str))
    assert set(summary) == {"config", "num_parameters", "checkpoint", "adopted", "samples", "sampler"}
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(STEPS)
    assert summary["adopted"]["timesteps"] == scheduler.timesteps.tolist()
    assert (summary["adopted"]["scheduler"], summary["adopted"]["prediction_type"]) == ("DDIMScheduler", "v_prediction")
    assert summary["num_parameters"] == sum(p.numel() for p in unet.parameters())

    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    info = checkpoint[CONFIG_KEY]
    levels = (1 - scheduler.alphas_cumprod[scheduler.timesteps.flip(0)].double()).tolist()
    assert info["grid"] == levels and info["data_shape"] == list(IMAGE) and info["is_image"] is True
    assert set(info["config"]) >= {"denoiser", "data", "diffusion", "sampler", "seed", "sample_seed", "variant"}
    assert info["config"]["diffusion"]["grid_values"] == levels and info["config"]["sampler"]["_target_"].endswith("DDIM")
    assert info["config"]["data"]["_target_"] == "lightning_diff.data.images.DigitsDataModule"
    assert info["config"]["denoiser"]["clip_sample"] is True  # DDIMScheduler's default, recorded
    assert all(key.startswith("denoiser.unet.") for key in checkpoint["state_dict"])
    for key, value in unet.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][f"denoiser.unet.{key}"], value), key

    assert TrainedRun.load(run).sampler.settings() == {"eta": 0.0}  # the sampler object, rebuilt from its node
    read = read_run_dir(run)
    assert read.name == "my_model" and read.num_parameters == summary["num_parameters"] and read.samples is not None
    with np.load(run / "samples.npz") as stored:
        assert stored["samples"].shape == (COUNT, *IMAGE)
        assert stored["seeds"].tolist() == sample_seeds(7, COUNT) and stored["levels"].tolist() == levels[::-1]


@pytest.mark.slow
def test_adopt_sample_and_compare_on_the_command_line(tmp_path, unet):
    """The run's samples.npz is what `sample` draws from the same seeds, and `compare` reads the run."""
    folder = save_pipeline(tmp_path / "model", unet, DDIMScheduler(prediction_type="epsilon"))
    run = tmp_path / "run"
    made = run_module("lightning_diff.adopt", f"path={folder}", f"out={run}", f"num_inference_steps={STEPS}",
                      "num_samples=6", "seed=3")
    assert made.returncode == 0, made.stderr
    assert f"run directory: {run}" in made.stdout
    drawn = run_module("lightning_diff.sample", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "num_samples=6", "seed=3",
                       f"out={tmp_path / 'again.npz'}")
    assert drawn.returncode == 0, drawn.stderr
    with np.load(run / "samples.npz") as adopted, np.load(tmp_path / "again.npz") as again:
        for key in ("seeds", "levels"):
            assert adopted[key].tolist() == again[key].tolist(), key
        np.testing.assert_allclose(adopted["samples"], again["samples"], rtol=0, atol=1e-6)
    compared = run_module("lightning_diff.compare", f"a={run}", f"b={run}")
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert result["r2_samples_median"] == 1.0 and len(result["r2_single_step_per_level"]) == STEPS


# ---------------------------------------------------------------- mistakes


def test_a_level_off_the_schedulers_timesteps_is_one_clear_error(tmp_path, unet):
    folder = save_pipeline(tmp_path / "model", unet, DDIMScheduler())
    adopted(folder, tmp_path / "run", "num_samples=0")
    trained = TrainedRun.load(tmp_path / "run")
    with pytest.raises(UserError, match=r"at t=0\.5, which is none of the 10 levels .* t=0\.605989 at timestep 300"):
        trained.denoiser(torch.zeros(2, *IMAGE), torch.full((2,), 0.5))
    with pytest.raises(UserError, match="none of the 10 levels"):
        draw_samples(trained.denoiser, make_grid(5), IMAGE, [0], sampler=make_sampler("ddim"), is_image=True)
    with pytest.raises(UserError, match="is defined only on its own grid of 10 levels"):
        trained.draw([0], grid=make_grid(5))
    assert not (tmp_path / "run" / "samples.npz").exists()  # num_samples=0: none drawn


def test_the_family_is_made_by_adopt_and_needs_diffusers(monkeypatch):
    """`train denoiser=diffusers_unet` has nothing to train; without diffusers the hint names the extra."""
    with pytest.raises(UserError, match=re.escape("python -m lightning_diff.adopt path=DIR out=RUN_DIR")):
        diffusers_unet.build(IMAGE, make_grid(STEPS))
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    node = diffusers_unet.denoiser_node(dict(tiny_unet().config), scheduler)
    settings = {key: value for key, value in node.items() if key != "_target_"}
    grid = NoiseGrid(torch.tensor(settings["levels"], dtype=torch.float64))
    built = diffusers_unet.build(IMAGE, grid, **settings)
    assert built.num_parameters() == sum(p.numel() for p in tiny_unet().parameters())
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what a missing package looks like to import
    with pytest.raises(UserError, match=re.escape("pip install 'lightning_diff[adopt]'")):
        diffusers_unet.build(IMAGE, grid, **settings)


def write_json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def bad_weights(folder: Path, unet: UNet2DModel) -> list[str]:
    save_pipeline(folder / "model", unet, DDIMScheduler())
    (folder / "model" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    return [f"path={folder / 'model'}"]


def bare_with(scheduler):
    def make(folder: Path, unet: UNet2DModel) -> list[str]:
        unet_folder, scheduler_folder = save_bare(folder, unet, scheduler)
        return [f"path={unet_folder}", f"scheduler={scheduler_folder}"]

    return make


CONDITIONAL_PIPELINE = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}


def zero_terminal_snr() -> DDIMScheduler:
    return DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing")


BAD = {
    "no folder": (lambda folder, unet: [f"path={folder / 'nowhere'}"], "path=.*nowhere: no such folder"),
    "not a diffusers model": (
        lambda folder, unet: [f"path={write_json(folder / 'x' / 'notes.json', {}).parent}"],
        "is not a saved diffusers model",
    ),
    "a conditional pipeline": (
        lambda folder, unet: [f"path={write_json(folder / 'p' / 'model_index.json', CONDITIONAL_PIPELINE).parent}"],
        r"is a pipeline whose unet is \['diffusers', 'UNet2DConditionModel'\]",
    ),
    "unreadable weights": (bad_weights, "could not read the UNet2DModel weights in .*unet"),
    "no scheduler": (
        lambda folder, unet: [f"path={save_bare(folder, unet, DDIMScheduler())[0]}"],
        "is a UNet2DModel folder, which holds no scheduler; add scheduler=",
    ),
    "no alphas_cumprod": (bare_with(ScoreSdeVeScheduler()), "is a ScoreSdeVeScheduler, which has no alphas_cumprod"),
    "unknown prediction type": (
        bare_with(DDIMScheduler(prediction_type="flow_prediction")),
        "the scheduler's prediction_type='flow_prediction' cannot be adopted",
    ),
    "too many steps": (
        lambda folder, unet: [*bare_with(DDIMScheduler())(folder, unet), "num_inference_steps=1001"],
        "num_inference_steps=1001 is more than the 1000 timesteps",
    ),
    "no steps": (
        lambda folder, unet: [*bare_with(DDIMScheduler())(folder, unet), "num_inference_steps=0"],
        "num_inference_steps=0 is not valid",
    ),
    "t = 1": (bare_with(zero_terminal_snr()), "our samplers need 0 < t < 1"),
    "class-conditional": (
        lambda folder, unet: bare_with(DDIMScheduler())(folder, tiny_unet(num_class_embeds=10)),
        "the UNet2DModel is class-conditional",
    ),
    "data of another shape": (
        lambda folder, unet: [*bare_with(DDIMScheduler())(folder, unet), "data=digits"],
        r"are images of shape \(1, 8, 8\), but the model makes images of shape \(3, 8, 8\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, unet, capsys, case):
    make, expected = BAD[case]
    overrides = make(tmp_path, unet)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(lambda: adopt(adopt_config(f"out={out}", *overrides)))
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(expected, lines[0]), lines[0]
    assert not out.exists()


def test_a_run_already_there_is_kept(tmp_path, unet, capsys):
    folder = save_pipeline(tmp_path / "model", unet, DDIMScheduler())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(SystemExit):
        exit_on_user_error(lambda: adopted(folder, tmp_path / "run"))
    assert "already holds a run (run.json)" in capsys.readouterr().err
    assert (tmp_path / "run" / "run.json").read_text() == "{}" and not (tmp_path / "run" / "checkpoints").exists()


def test_a_mistake_on_the_real_command_line_exits_2_with_one_line(tmp_path):
    result = run_module("lightning_diff.adopt", f"path={tmp_path / 'nowhere'}", f"out={tmp_path / 'run'}")
    assert result.returncode == 2
    expected = (
        f"error: path={tmp_path / 'nowhere'}: no such folder; give a folder written by save_pretrained: a pipeline "
        "(model_index.json, unet/, scheduler/) or a UNet2DModel (config.json and its weights) with "
        "scheduler=DIR_OR_FILE"
    )
    assert result.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "run").exists()
