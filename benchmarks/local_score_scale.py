"""The exact LS and ELS machines at full dataset size: seconds per sample and peak memory.

Two cases, each for LS (zero padding) and ELS (circular), every candidate patch in the posterior:

- ``uniform``: uniform noise images of CIFAR-10's size, 3x32x32, N = 50,000 (no 50,000-image
  set ships offline), 10 levels, patches 9 -> 3;
- ``fashion``: all 60,000 Fashion-MNIST training images at 28x28 (Debian's dataset-fashion-mnist
  through the package's datamodule, or a torchvision root holding FashionMNIST/raw/ given as
  ``fashion_root``), 20 levels, the machines' default patch sizes.

Which machines run on each case is a setting (``uniform_machines``, ``fashion_machines``). A
third machine, ``ELS bounded`` (circular, ``denoiser.tolerance``: the posterior skips only
candidates whose total weight is provably below ``tolerance``), is for Fashion-MNIST; its row
gives the largest error bound any call reported, the share of the exact products it evaluated,
and its measured error against the float64 definition on ``checked_pixels`` pixels at the
lowest, middle and highest levels of the sampling run (the states the sampler passed it). At
the full size (``cpu_full``, all 60,000 images) LS and the bounded ELS are held to issue 24's
budgets (5 and 60 s per sample); the exact ELS is not run there on a CPU (ten times the work of
N = 6,000, which took 54 s per sample; docs/performance.md).

There is no peer: the released code needs hours per sample at these sizes. A row is ours alone,
DDIM per sample from one run of ``num_samples`` samples in one batch, with the peak memory
of that run: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the process's peak resident
memory so far (it cannot be reset between rows). A machine that runs out of GPU memory, or a
dataset that is missing, gives a row that says so, and the other rows still run. ``tiny`` runs
the same code on a few images (``benchmarks/gpu.sh --device cpu``).

Memory: the candidates stream past in chunks, so ELS holds the training set, the queries and
chunks of 16-40 MB (lightning_diff/denoisers/local_score.py's docstring); LS its per-pixel
features, H W (C + 2) N floats (1.0 GB at 3x32x32, N = 50,000; 0.56 GB at Fashion-MNIST). Not
yet measured on a GPU.
"""

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from benchmarks.local_score import straightforward_pixel
from benchmarks.measure import peak_rss_mib, synchronize
from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.data.images import FashionMNISTDataModule
from lightning_diff.denoisers import local_score
from lightning_diff.diffusion.grids import NoiseGrid, level_index, make_grid
from lightning_diff.diffusion.samplers import make_sampler
from lightning_diff.errors import UserError

DESCRIPTION = (
    "exact LS and ELS, and ELS with a certified error bound, at full dataset size (3x32x32 N=50,000; "
    "Fashion-MNIST 60,000 x 28x28, 20 levels): s/sample, peak memory, the bound, no peer"
)
MACHINES: dict[str, dict[str, Any]] = {
    "LS": dict(equivariant=False, padding="zeros"),
    "ELS": dict(equivariant=True, padding="circular"),
    "ELS bounded": dict(equivariant=True, padding="circular"),
}
# Issue 24's budgets per sample on the 2-core CPU at all of Fashion-MNIST over 20 levels.
FULL_FASHION_BUDGET_S = {"LS": 5.0, "ELS bounded": 60.0}
FASHION_TRAIN_SIZE = 60_000
TEN_LEVEL_PATCHES = [9, 9, 9, 7, 7, 7, 5, 5, 3, 3]

SIZES: dict[str, dict[str, Any]] = {
    # fashion_train None: every training image; fashion_root None: Debian's files; tolerance: the
    # bounded ELS's (None: that machine is not run); checked_pixels: pixels per checked level.
    "tiny": dict(
        uniform_train=32, uniform_side=8, uniform_patch_sizes=[5, 5, 3], uniform_machines=["LS", "ELS"],
        fashion_train=32, fashion_levels=3, fashion_root=None, fashion_machines=["LS", "ELS", "ELS bounded"],
        num_samples=2, tolerance=1e-6, checked_pixels=2,
    ),
    "cpu": dict(
        uniform_train=200, uniform_side=32, uniform_patch_sizes=TEN_LEVEL_PATCHES, uniform_machines=["LS", "ELS"],
        fashion_train=200, fashion_levels=20, fashion_root=None, fashion_machines=["LS", "ELS", "ELS bounded"],
        num_samples=2, tolerance=1e-6, checked_pixels=4,
    ),
    # All of Fashion-MNIST on the CPU: the exact ELS would take about ten times the 54 s per sample
    # it took at N = 6,000 (docs/performance.md).
    "cpu_full": dict(
        uniform_train=0, uniform_side=32, uniform_patch_sizes=TEN_LEVEL_PATCHES, uniform_machines=[],
        fashion_train=None, fashion_levels=20, fashion_root=None, fashion_machines=["LS", "ELS bounded"],
        num_samples=1, tolerance=1e-6, checked_pixels=4,
    ),
    # Without the bounded ELS: on the CPU it was slower than the exact machine at N = 6,000
    # (docs/performance.md), and a device session's minutes go to the exact machines.
    "gpu": dict(
        uniform_train=50_000, uniform_side=32, uniform_patch_sizes=TEN_LEVEL_PATCHES, uniform_machines=["LS", "ELS"],
        fashion_train=None, fashion_levels=20, fashion_root=None, fashion_machines=["LS", "ELS"],
        num_samples=4, tolerance=1e-6, checked_pixels=4,
    ),
}


def fashion_images(s: dict[str, Any]) -> Tensor:
    """Fashion-MNIST's training images at 28x28 in [-1, 1], as a training run would see them."""
    datamodule = FashionMNISTDataModule(root=s["fashion_root"], num_train=s["fashion_train"], seed=0)
    datamodule.setup("fit")
    return datamodule.train_data


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_mib() / 1024


@dataclass
class Timing:
    """One machine's sampling run: seconds per sample, peak memory (GiB), patch sizes (highest
    noise first), the largest error bound any call reported, the share of the exact products
    evaluated per level, and the first sample's (state, output) at the checked levels."""

    seconds: float
    peak_gib: float
    patch_sizes: list[int]
    error_bound: float = 0.0
    products: dict[float, float] = field(default_factory=dict)
    states: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


def time_machine(
    x0: Tensor, grid: NoiseGrid, patch_sizes: list[int] | None, options: dict[str, Any], num_samples: int,
    device: torch.device, checked_levels: tuple[int, ...] = (),
) -> Timing:
    """DDIM with the machine from ``num_samples`` seeds in one batch, timed with building what the
    machine caches (pixel features, candidate statistics, trees), keeping what the calls report
    and the first sample's state and output at the grid levels ``checked_levels``."""
    shape = tuple(x0.shape[1:])
    machine = local_score.build(shape, grid, patch_sizes=patch_sizes, **options).to(device)
    machine.fit_data(x0)  # keeps the training tensor: nothing to time
    # One call at the lowest level first, so device start-up (kernels, library handles) is not timed.
    machine(torch.randn(1, *shape, device=device), grid.levels[:1].float().to(device))
    # Refitting drops what that call built (features, statistics, trees): the timing includes building them.
    machine.fit_data(x0)
    timing = Timing(math.nan, math.nan, list(reversed(machine.patch_sizes)))

    def record(module: torch.nn.Module, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        timing.error_bound = max(timing.error_bound, module.last_error_bound)
        timing.products.update(module.last_products)
        y, t = inputs
        k = int(level_index(module.levels, t[:1]))
        if k in checked_levels:
            timing.states[k] = (y[:1].detach().clone(), output[:1].detach().clone())

    hook = machine.register_forward_hook(record)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    samples = make_sampler("ddim").sample(machine, grid, shape, list(range(num_samples)), device=device)
    synchronize(device)
    timing.seconds = (time.perf_counter() - start) / num_samples
    hook.remove()
    assert torch.isfinite(samples).all(), "non-finite samples"
    timing.peak_gib = peak_memory_gib(device)
    return timing


def measured_error(
    x0: Tensor, grid: NoiseGrid, timing: Timing, num_pixels: int
) -> tuple[float, dict[float, float]]:
    """The largest |ours - definition| (float64, circular ELS) over ``num_pixels`` seeded pixels of
    each checked level's first sample, overall and per level (t rounded to 6 decimals)."""
    height, width = x0.shape[2:]
    pixels = torch.randperm(height * width, generator=torch.Generator().manual_seed(0))[:num_pixels].tolist()
    data = x0.double().cpu()
    errors = {}
    for k, (y, out) in sorted(timing.states.items()):
        t, size = float(grid.levels[k]), timing.patch_sizes[len(grid) - 1 - k]
        state, ours = y.double().cpu(), out.double().cpu()
        error = 0.0
        for pixel in pixels:
            i, j = divmod(pixel, width)
            exact = straightforward_pixel(data, state, t, size, (i, j))
            error = max(error, float((ours[:, :, i, j] - exact).abs().max()))
        errors[round(t, 6)] = error
    return max(errors.values(), default=0.0), errors


def machine_row(
    case: str, kind: str, x0: Tensor, grid: NoiseGrid, patch_sizes: list[int] | None, s: dict[str, Any],
    device: torch.device,
) -> Row:
    """One machine on the training images ``x0``: its time per sample and what it measured."""
    memory = "peak GPU memory (max_memory_allocated)" if device.type == "cuda" else "peak RSS of the process so far"
    options = dict(MACHINES[kind])
    bounded = kind == "ELS bounded"
    checked: tuple[int, ...] = ()
    if bounded:
        options["tolerance"] = s["tolerance"]
        checked = tuple(sorted({0, len(grid) // 2, len(grid) - 1}))
    try:
        timing = time_machine(x0.to(device), grid, patch_sizes, options, s["num_samples"], device, checked)
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        first_line = str(error).splitlines()[0]
        return Row("local_score_scale", case, "s/sample", math.nan, note=f"out of GPU memory: {first_line}")
    note = (
        f"{memory} {timing.peak_gib:.2f} GiB; DDIM, one run of {s['num_samples']} samples in one batch; "
        f"patches {','.join(map(str, timing.patch_sizes))}"
    )
    extra: dict[str, Any] = {
        "peak_memory_gib": timing.peak_gib, "patch_sizes": timing.patch_sizes, "levels": grid.levels.tolist(),
    }
    if bounded:
        error, errors = measured_error(x0, grid, timing, s["checked_pixels"])
        shares = list(timing.products.values())
        note += (
            f"; tolerance {s['tolerance']:g}: largest reported error bound {timing.error_bound:.3g}, measured error "
            f"{error:.3g} (against the float64 definition, float32 rounding on top of the bound; "
            f"{s['checked_pixels']} pixels at t = "
            f"{', '.join(f'{t:g}' for t in errors)}); exact products evaluated {min(shares):.3f}-{max(shares):.3f} "
            "per level"
        )
        extra.update(
            tolerance=s["tolerance"], error_bound=timing.error_bound, measured_error=error,
            measured_error_per_level=errors, products_per_level=timing.products,
        )
    budget = FULL_FASHION_BUDGET_S.get(kind) if x0.shape[0] >= FASHION_TRAIN_SIZE and x0.shape[-1] == 28 else None
    if budget is None:
        return Row("local_score_scale", case, "s/sample", timing.seconds, note=note, extra=extra)
    return Row(
        "local_score_scale", case, "s/sample", timing.seconds, peer=budget, peer_name="issue 24 budget",
        target=("<=", 1.0), note=note, extra=extra,
    )


def case_rows(
    name: str, x0: Tensor, grid: NoiseGrid, patch_sizes: list[int] | None, machines: list[str], s: dict[str, Any],
    device: torch.device,
) -> list[Row]:
    """One row per machine on the training images ``x0``."""
    return [
        machine_row(f"{name} {s['num_samples']} samples {len(grid)} levels [{kind}]", kind, x0, grid, patch_sizes, s,
                    device)
        for kind in machines
    ]


def run(config: Config) -> list[Row]:
    s = config.settings
    device = config.device
    unknown = [kind for kind in s["uniform_machines"] + s["fashion_machines"] if kind not in MACHINES]
    if unknown:
        raise SystemExit(f"error: local_score_scale has no machine {', '.join(unknown)}; valid: {', '.join(MACHINES)}")
    if "ELS bounded" in s["fashion_machines"] and not s["tolerance"]:
        raise SystemExit("error: the ELS bounded row needs --set tolerance=<weight in (0, 1)>, e.g. 1e-6")
    rows = []
    if s["uniform_machines"]:
        side = s["uniform_side"]
        uniform = torch.rand(s["uniform_train"], 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
        patch_sizes = s["uniform_patch_sizes"]
        rows += case_rows(
            f"uniform 3x{side}x{side} N={s['uniform_train']}", uniform, make_grid(len(patch_sizes)), patch_sizes,
            s["uniform_machines"], s, device,
        )
    if not s["fashion_machines"]:
        return rows
    grid = make_grid(s["fashion_levels"])
    try:
        fashion = fashion_images(s)
    except UserError as error:
        return rows + [
            Row("local_score_scale", f"Fashion-MNIST 1x28x28 [{kind}]", "s/sample", math.nan, note=f"not run: {error}")
            for kind in s["fashion_machines"]
        ]
    return rows + case_rows(
        f"Fashion-MNIST 1x28x28 N={fashion.shape[0]}", fashion, grid, None, s["fashion_machines"], s, device
    )
