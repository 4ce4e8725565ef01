"""Peak memory beside time: training the paper UNet, and one call of the empirical denoiser.

Each measurement runs in a fresh subprocess (``python -m benchmarks.memory CASE SETTINGS``), so
one peak cannot hide another. Cases:

- training: the paper UNet (one network, RGB 64x64) at batch 64 for a few steps, ours
  (DiffusionModule + Trainer with EMA) against the plain loop of ``trainer_overhead``;
- empirical: the Bayes-optimal denoiser of N training images on one batch, ours (chunked
  log-sum-exp) against the one-line softmax over all N logits.

Reported: peak resident set (and, on CUDA, peak allocated device memory), the rise over the
process's peak after imports and data, and the seconds the work took.
"""

import json
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from benchmarks import trainer_overhead, workloads
from benchmarks.measure import peak_rss_mib, synchronize
from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.denoisers.empirical import EmpiricalDenoiser

DESCRIPTION = "peak memory and time of training the paper UNet (batch 64) and of the empirical denoiser on N=60,000"

_TRAIN = dict(trainer_overhead.SIZES["gpu"], variants=["none"], warmup=1, window=1, windows=1, rounds=1, num_train=256)
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "train": dict(trainer_overhead.SIZES["tiny"], warmup=1, window=1, windows=1),
        "empirical": {"num_train": 2000, "shape": (1, 8, 8), "batch": 16},
    },
    "cpu": {"train": _TRAIN, "empirical": {"num_train": 60_000, "shape": (1, 28, 28), "batch": 256}},
    "gpu": {"train": _TRAIN, "empirical": {"num_train": 60_000, "shape": (3, 64, 64), "batch": 256}},
}
CASES = ("train_ours", "train_plain", "empirical_ours", "empirical_naive")


def naive_empirical(data: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """E[x0 | y] as one softmax over every training image's logit, (B, N) at once."""
    flat, a = y.reshape(y.shape[0], -1), (1 - t) ** 0.5
    logits = (a * flat @ data.T - 0.5 * a * a * data.pow(2).sum(1)) / t
    return (torch.softmax(logits, dim=1) @ data).reshape(y.shape)


def work_for(case: str, settings: dict[str, Any], device: torch.device) -> Callable[[], Any]:
    """The work ``case`` measures, with its data and model already built."""
    if case.startswith("train"):
        cfg = settings["train"]
        shape = tuple(cfg["shape"])
        data = workloads.images(cfg["num_train"], shape)
        grid = workloads.grid(cfg["num_levels"])
        denoiser = workloads.unet_denoiser(shape, grid, cfg["conditioning"], cfg["num_blocks"], cfg["base_channels"])
        arm = trainer_overhead.run_ours if case == "train_ours" else trainer_overhead.run_peer
        return partial(arm, cfg, denoiser, data, set(), device)
    cfg = settings["empirical"]
    shape = tuple(cfg["shape"])
    data = workloads.images(cfg["num_train"], shape).reshape(cfg["num_train"], -1).to(device)
    y = workloads.images(cfg["batch"], shape, seed=1).to(device)
    if case == "empirical_naive":
        return torch.no_grad()(partial(naive_empirical, data, y, 0.5))
    model = EmpiricalDenoiser(shape).to(device)
    model.fit_data(data.reshape(-1, *shape))
    return torch.no_grad()(partial(model, y, torch.full((cfg["batch"],), 0.5, device=device)))


def measure(case: str, settings: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Runs in the child: the work of ``case``, with its peak memory and time."""
    work = work_for(case, settings, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = peak_rss_mib()
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    result = {"seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline}
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def in_subprocess(case: str, settings: dict[str, Any], device: torch.device) -> dict[str, float]:
    threads = str(torch.get_num_threads())
    command = [sys.executable, "-m", "benchmarks.memory", case, json.dumps(settings), str(device), threads]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(config: Config) -> list[Row]:
    results = {case: in_subprocess(case, config.settings, config.device) for case in CASES}
    rows = []
    train, emp = config.settings["train"], config.settings["empirical"]
    labels = {
        "train": (
            (
                f"train UNet {'x'.join(map(str, train['shape']))} b{train['batch']}, "
                f"{trainer_overhead.total_steps(train)} steps"
            ),
            "plain loop",
        ),
        "empirical": (
            f"empirical N={emp['num_train']} {'x'.join(map(str, emp['shape']))}, batch {emp['batch']}",
            "softmax over all N",
        ),
    }
    units = [("peak_rss_mib", "MiB peak RSS")]
    if config.device.type == "cuda":
        units.append(("peak_cuda_mib", "MiB peak CUDA"))
    for kind, (case, peer_name) in labels.items():
        ours, peer = results[f"{kind}_ours"], results[f"{kind}_{'plain' if kind == 'train' else 'naive'}"]
        for key, unit in units:
            rows.append(
                Row(
                    "memory",
                    case,
                    unit,
                    ours[key],
                    peer[key],
                    peer_name,
                    None,
                    note=(
                        f"rise over the process before the work: {ours[key] - ours['baseline_rss_mib']:.0f} vs "
                        f"{peer[key] - peer['baseline_rss_mib']:.0f} MiB; time {ours['seconds']:.2f} s vs "
                        f"{peer['seconds']:.2f} s"
                    )
                    if key == "peak_rss_mib"
                    else "",
                    extra={"ours": ours, "peer": peer},
                )
            )
    return rows


if __name__ == "__main__":
    case_name, settings_json, device_name, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))
    print(json.dumps(measure(case_name, json.loads(settings_json), torch.device(device_name))))
