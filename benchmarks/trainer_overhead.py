"""Per-step training time: DiffusionModule under a Lightning Trainer against a plain PyTorch loop.

Both arms train the same UNet from the same initial weights on the same in-memory data and
batch size, with Adam (lr 1e-3), the shared objective (``DiffusionObjective.loss``) and an EMA
of the weights (ours: the EMA callback of ``python -m lightning_diff.train``; the peer: a
foreach lerp with the same decay). Ours also runs what a training run runs every step: the
learning-rate schedule, the NaN/inf checks on loss and gradients and ``self.log``. Left out of
both: checkpoints, validation, progress bar and logger, which run every N steps or not at all.

The steady-state step time is a window of steps after a warm-up (Trainer start-up and, with
``compile``, compilation excluded), timed by a callback in ours and the same way in the loop;
ours and the peer alternate for ``rounds`` rounds. Trainer start-up is reported on its own row.

Variants (rows): ``none`` or ``+``-joined ``channels_last`` (model in NHWC), ``bf16``
(ours: ``precision="bf16-mixed"``; the peer: ``torch.autocast`` bf16) and ``compile``
(``torch.compile`` of the denoiser in both arms).
"""

import itertools
import time
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from benchmarks import workloads
from benchmarks.measure import median, synchronize
from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.callbacks.ema import EMA, WarmupEMA
from lightning_diff.module import DiffusionModule, WarmupCosine

DESCRIPTION = (
    "per training step: DiffusionModule + Lightning Trainer vs a plain PyTorch loop "
    "(same UNet, data, Adam, objective, EMA)"
)
EMA_DECAY = 0.999
OPTIONS = ("channels_last", "bf16", "compile")

_COMMON = {"num_train": 2048, "seed": 0}
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(_COMMON, shape=(1, 8, 8), num_blocks=1, base_channels=4, conditioning="per_level", num_levels=3,
                 batch=4, warmup=2, window=3, windows=2, rounds=1, variants=["none", "channels_last+bf16"]),
    "cpu": dict(_COMMON, shape=(1, 16, 16), num_blocks=2, base_channels=16, conditioning="per_level", num_levels=10,
                batch=16, warmup=5, window=10, windows=3, rounds=2, variants=["none"]),
    # The paper's UNet (RGB 64x64, 1.9M parameters) at batch 64, one network.
    "gpu": dict(_COMMON, shape=(3, 64, 64), num_blocks=3, base_channels=32, conditioning="blind", num_levels=10,
                batch=64, warmup=15, window=25, windows=4, rounds=2,
                variants=["none", "channels_last", "bf16", "channels_last+bf16", "channels_last+bf16+compile"]),
}


def parse_variant(variant: str) -> set[str]:
    options = set() if variant == "none" else set(variant.split("+"))
    unknown = options - set(OPTIONS)
    if unknown:
        raise ValueError(f"variant {variant!r}: unknown option(s) {sorted(unknown)}; valid: none or +-joined {OPTIONS}")
    return options


def prepare(denoiser: nn.Module, options: set[str], device: torch.device) -> nn.Module:
    denoiser = denoiser.to(device)
    if "channels_last" in options:
        denoiser = denoiser.to(memory_format=torch.channels_last)
    if "compile" in options:
        denoiser = torch.compile(denoiser)
    return denoiser


class WindowTimer(L.Callback):
    """Host-clock stamps (device synchronised) after the batches that close each timing window."""

    def __init__(self, marks: list[int], device: torch.device) -> None:
        self.marks = set(marks)
        self.device = device
        self.stamps: list[tuple[float, float]] = []
        self.first_batch: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first_batch is None:
            self.first_batch = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx in self.marks:
            synchronize(self.device)
            self.stamps.append(clocks())


def marks(settings: dict[str, Any]) -> list[int]:
    """Indices of the steps after which a window closes (the first opens the first window)."""
    return [settings["warmup"] - 1 + j * settings["window"] for j in range(settings["windows"] + 1)]


def total_steps(settings: dict[str, Any]) -> int:
    return settings["warmup"] + settings["window"] * settings["windows"]


def clocks() -> tuple[float, float]:
    """Wall clock and this process's CPU time: on a shared CPU the second does not count the
    time other jobs hold the cores, so it compares the work each arm does more steadily."""
    return time.perf_counter(), time.process_time()


def per_step(stamps: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per step of each window."""
    return [((b[0] - a[0]) / window, (b[1] - a[1]) / window) for a, b in itertools.pairwise(stamps)]


def run_ours(
    settings: dict[str, Any], denoiser: nn.Module, data: Tensor, options: set[str], device: torch.device
) -> tuple[list[tuple[float, float]], float]:
    """(wall, CPU) seconds per step of each window, and the seconds from ``fit()`` to the first step."""
    grid = workloads.grid(settings["num_levels"])
    steps = total_steps(settings)
    module = DiffusionModule(
        prepare(denoiser, options, device),
        workloads.objective(grid, settings["conditioning"]),
        optimizer=workloads.adam(),
        schedule=WarmupCosine(0, steps, "constant", 0.0),
        seed=settings["seed"],
        run_info={"data_shape": list(settings["shape"])},
    )
    timer = WindowTimer(marks(settings), device)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=steps,
        precision="bf16-mixed" if "bf16" in options else "32-true",
        callbacks=[EMA(EMA_DECAY), timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=workloads.InMemoryData(data, settings["batch"]))
    assert timer.first_batch is not None
    return per_step(timer.stamps, settings["window"]), timer.first_batch - started


def run_peer(
    settings: dict[str, Any], denoiser: nn.Module, data: Tensor, options: set[str], device: torch.device
) -> tuple[list[tuple[float, float]], float]:
    """The same training as a plain loop: (wall, CPU) seconds per step of each window, and the start-up."""
    started = time.perf_counter()
    grid = workloads.grid(settings["num_levels"])
    objective = workloads.objective(grid, settings["conditioning"])
    model = prepare(denoiser, options, device)
    model.train()
    optimizer = workloads.adam()(model.parameters())
    tensors = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()]
    averaged = [t.detach().clone() for t in tensors]
    ema = WarmupEMA(EMA_DECAY)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in options else nullcontext()
    batch, seed = settings["batch"], settings["seed"]
    order = torch.randperm(data.shape[0])
    closing = set(marks(settings))
    stamps: list[tuple[float, float]] = []
    first_batch = time.perf_counter()
    for step in range(total_steps(settings)):
        start = (step * batch) % (data.shape[0] - batch + 1)
        x0 = data[order[start : start + batch]].to(device)
        with autocast:
            loss = objective.loss(model, x0, seed, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            weight = 1.0 - min(ema.decay, (1.0 + step) / (10.0 + step))
            torch._foreach_lerp_(averaged, [t.detach() for t in tensors], weight)
        if step in closing:
            synchronize(device)
            stamps.append(clocks())
    return per_step(stamps, settings["window"]), first_batch - started


def run(config: Config) -> list[Row]:
    settings, device = config.settings, config.device
    shape = tuple(settings["shape"])
    data = workloads.images(settings["num_train"], shape, settings["seed"])
    prototype = workloads.unet_denoiser(
        shape,
        workloads.grid(settings["num_levels"]),
        settings["conditioning"],
        settings["num_blocks"],
        settings["base_channels"],
        settings["seed"],
    )
    rows = []
    for variant in settings["variants"]:
        options = parse_variant(variant)
        ours: list[tuple[float, float]] = []
        peer: list[tuple[float, float]] = []
        ours_startup: list[float] = []
        peer_startup: list[float] = []
        # Compilation dominates a compiled variant's cost, so one round of it is enough.
        rounds = 1 if "compile" in options else settings["rounds"]
        try:
            for round_index in range(rounds):
                # ABBA order, so a drift in the machine's load does not favour whichever runs first.
                arms = [(run_ours, ours, ours_startup), (run_peer, peer, peer_startup)]
                for arm, windows, startups in arms[:: 1 if round_index % 2 == 0 else -1]:
                    measured, startup = arm(settings, workloads.twin(prototype), data, options, device)
                    windows += measured
                    startups.append(startup)
        except Exception as error:  # noqa: BLE001 - a variant the stack cannot run must not cost the rest
            print(f"trainer_overhead: variant {variant} failed, row skipped: {type(error).__name__}: {error}")
            continue
        case = f"{settings['conditioning']} UNet {'x'.join(map(str, shape))} b{settings['batch']} [{variant}]"
        note = (
            f"median of {len(ours)} windows of {settings['window']} steps after {settings['warmup']} warm-up; "
            f"Trainer start-up to first step {median(ours_startup):.2f} s vs {median(peer_startup):.2f} s"
        )
        extra = {"ours_windows_s": ours, "peer_windows_s": peer, "ours_startup_s": ours_startup,
                 "peer_startup_s": peer_startup}
        clocks_shown = [("ms/step", 0)] + ([("CPU ms/step", 1)] if device.type == "cpu" else [])
        for unit, which in clocks_shown:
            rows.append(
                Row(
                    "trainer_overhead",
                    case,
                    unit,
                    median([w[which] for w in ours]) * 1e3,
                    median([w[which] for w in peer]) * 1e3,
                    "plain loop",
                    ("<=", 1.03),
                    note=note if which == 0 else "process CPU time: steadier than wall time on a shared CPU",
                    extra=extra if which == 0 else {},
                )
            )
    return rows
