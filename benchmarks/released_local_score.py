"""Kamb & Ganguli's released local score machines as a peer, imported at run time from ELS_REFERENCE.

The released code (``utils/idealscore.py`` of their public repository; benchmarks/README.md says
how to get it) is never copied into this repository: ``ELS_REFERENCE=DIR`` names the folder that
holds its ``idealscore.py`` and :func:`load_reference` imports that file as it is. Its machines
are built the way its ``els_script.py`` builds them, on our training tensors, and draw one sample
per call as that script does (their arithmetic broadcasts the per-sample noise level against the
image width, so a batch of several samples fails).

Their grid. The sampler walks i = nsteps - 1, ..., 1 with nsteps = len(scales), at time
s = i / nsteps, noise variance beta(s) = 1 - cos^2(pi/2 s / 1.008) (their "legacy" cosine
schedule, what the script passes) and patch size scales[i]; its last step goes to beta(0) = 0,
i.e. returns the last denoiser's x0 estimate. Each step is DDIM (eta = 0) written with
eps = -sqrt(beta) score. Our t is the noise variance, so our DDIM on the levels t = beta(i / nsteps)
takes the same steps: same denoiser calls, same levels, same update.

Their parameterisation. The backbones return the score s = -(y - a E[x0 | y]) / beta with
a = sqrt(1 - beta), so our x0 estimate is x0_hat = (y + beta s) / a.
"""

import importlib.util
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

ENVIRONMENT = "ELS_REFERENCE"
# The public repository's commit whose utils/idealscore.py imports and runs unmodified here
# (benchmarks/README.md); at 4aebaba and d2335d9 the ELS constructor reads undefined names.
WORKING_COMMIT = "bcfb46a"
# Their class for each machine; ours are configured alike in benchmarks/local_score.py.
RELEASED_CLASSES = {
    "ELS": "LocalEquivScoreModule",
    "bbELS": "LocalEquivBordersScoreModule",
    "LS": "LocalScoreModule",
}
NEEDED = ("ScheduledScoreMachine", "cosine_noise_schedule", *RELEASED_CLASSES.values())
# nsteps of their sampler: 10 entries of scales, denoiser calls at i = 9, ..., 1.
RELEASED_STEPS = 10
# The script's --scorebatchsize default: training images per pass of the ELS and bbELS loops.
SCRIPT_BATCH_SIZE = 256


def released_levels(steps: int = RELEASED_STEPS) -> list[float]:
    """The noise variances the released sampler calls its denoiser at, ascending: beta(i / steps),
    i = 1, ..., steps - 1 (1 - cos^2 written as sin^2)."""
    return [math.sin(math.pi / 2 * (i / steps) / 1.008) ** 2 for i in range(1, steps)]


def load_reference(directory: str | Path) -> ModuleType:
    """The released ``idealscore.py`` in ``directory``, imported unmodified; SystemExit says what is wrong."""
    folder = Path(directory).expanduser()
    source = folder / "idealscore.py"
    if not folder.is_dir():
        raise SystemExit(
            f"error: {ENVIRONMENT}={directory}: no such directory; point it at the folder that holds Kamb & "
            f"Ganguli's utils/idealscore.py (benchmarks/README.md says how to get it), or unset it"
        )
    if not source.is_file():
        raise SystemExit(
            f"error: {ENVIRONMENT}={directory} holds no idealscore.py; point it at the utils/ folder of a checkout "
            f"of Kamb & Ganguli's repository at commit {WORKING_COMMIT} (benchmarks/README.md)"
        )
    spec = importlib.util.spec_from_file_location("released_idealscore", source)
    assert spec is not None and spec.loader is not None, "a .py file always has a source loader"
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise SystemExit(
            f"error: importing {source} failed ({error}); it imports torchvision and matplotlib, which this "
            f"Python must have"
        ) from error
    missing = [name for name in NEEDED if not hasattr(module, name)]
    if missing:
        raise SystemExit(
            f"error: {source} defines no {', '.join(missing)}; use utils/idealscore.py of Kamb & Ganguli's "
            f"repository at commit {WORKING_COMMIT} (benchmarks/README.md)"
        )
    theirs = module.cosine_noise_schedule(torch.arange(1, RELEASED_STEPS) / RELEASED_STEPS).double()
    if not torch.allclose(theirs, torch.tensor(released_levels(), dtype=torch.float64), rtol=0, atol=1e-6):
        raise SystemExit(
            f"error: {source}'s cosine_noise_schedule gives {theirs.tolist()}, not the levels this benchmark samples "
            f"ours on; use commit {WORKING_COMMIT} (benchmarks/README.md)"
        )
    # Built once on one image now, so a commit whose constructors fail stops before minutes of timing.
    one_image = torch.zeros(1, 1, 3, 3)
    for kind in RELEASED_CLASSES:
        released_backbone(module, kind, one_image, kernel_size=3, batch_size=1)
    return module


def reference_from_environment() -> ModuleType | None:
    """The released code when ``ELS_REFERENCE`` is set, else None."""
    directory = os.environ.get(ENVIRONMENT)
    return load_reference(directory) if directory else None


def equal_batch_size(count: int) -> int:
    """The largest batch size up to the script's default that splits ``count`` images into equal
    batches: the released ELS averages each batch's weights (``torch.mean``) before adding the
    batches up, so a smaller last batch would weigh its candidates more and the result would not
    be the posterior."""
    return max(size for size in range(1, SCRIPT_BATCH_SIZE + 1) if count % size == 0)


def released_backbone(reference: ModuleType, kind: str, images: Tensor, kernel_size: int, batch_size: int) -> Any:
    """Their ``kind`` machine on ``images`` (N, C, H, W), built as their script builds it."""
    dataset = TensorDataset(images.cpu(), torch.zeros(images.shape[0], dtype=torch.long))  # labels unused
    name = RELEASED_CLASSES[kind]
    try:
        # Keywords only: the earliest commits take (kernel_size, dataset) in that order.
        return getattr(reference, name)(
            dataset=dataset, kernel_size=kernel_size, batch_size=batch_size, image_size=images.shape[-1],
            channels=images.shape[1], schedule=reference.cosine_noise_schedule,
        )
    except NameError as error:
        raise SystemExit(
            f"error: building the released {name} failed ({error}), as it does at commits 4aebaba and d2335d9; "
            f"use commit {WORKING_COMMIT} (benchmarks/README.md)"
        ) from error


class ReleasedMachine:
    """One released machine (``kind``: ELS, bbELS or LS) fitted to ``images`` (N, C, H, W), with
    ``patch_sizes`` one per released level, highest noise first."""

    def __init__(
        self, reference: ModuleType, kind: str, images: Tensor, patch_sizes: list[int], device: torch.device
    ) -> None:
        if len(patch_sizes) != RELEASED_STEPS - 1:
            raise ValueError(f"the released grid has {RELEASED_STEPS - 1} levels, got {len(patch_sizes)} patch sizes")
        self.schedule = reference.cosine_noise_schedule
        self.device = device
        self.shape = tuple(images.shape[1:])
        self.batch_size = images.shape[0] if kind == "LS" else equal_batch_size(images.shape[0])
        self.backbone = released_backbone(reference, kind, images, patch_sizes[0], self.batch_size)
        # scales[i] is read at s = i / nsteps; scales[0] never is (the loop stops at i = 1).
        self.scales = [patch_sizes[-1], *reversed(patch_sizes)]
        self.machine = reference.ScheduledScoreMachine(
            self.backbone, in_channels=images.shape[1], imsize=images.shape[-1],
            noise_schedule=self.schedule, score_backbone=True, scales=self.scales,
        )

    def sample(self, noise: Tensor) -> Tensor:
        """Their sample from one starting noise (1, C, H, W)."""
        return self.machine(noise.to(self.device), device=self.device)

    def denoise(self, y: Tensor, step: int) -> Tensor:
        """Their x0 estimate for one noisy image (1, C, H, W) at sampler step ``step`` (s = step / nsteps)."""
        s = step * torch.ones(1) / RELEASED_STEPS  # formed as their sampler forms it
        beta = self.schedule(s).to(self.device)
        score = self.backbone(s, y.to(self.device), device=self.device, k=self.scales[step])
        return (y.to(self.device) + beta * score) / (1 - beta).sqrt()
