"""How the benchmarks measure: wall-clock windows, interleaved repeats, peak memory, the machine.

The development machine's cores are shared with other jobs, so ours and the peer are timed in
alternation (ours, peer, ours, peer, ...) after a warm-up and compared by their medians:
a slow spell then hits both sides instead of one.
"""

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a host clock reads the time the work took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Seconds one call of ``fn`` takes, its device work included, and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, its device work included."""
    return timed(fn, device)[0]


def interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, timed ``repeats`` times in alternation after ``warmup`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, GPU, torch, and the load then."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "gpu": None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for the table's header."""
    gpu = f", GPU {info['gpu']} (CUDA {info.get('cuda')})" if info.get("gpu") else ", no GPU"
    load = ", ".join(f"{v:g}" for v in info["load_average"])
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads){gpu}; "
        f"torch {info['torch']}, Python {info['python']}; load average {load}"
    )
