"""Finding the benchmark modules and handing each its settings (the contract is in __init__)."""

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

import benchmarks

# Run first when running all: the quick ones, so a broken setup shows early.
PREFERRED_ORDER = ("trainer_overhead", "per_level_training", "sampling", "nn_search", "memory", "fid_embedding")


@dataclass
class Config:
    """What one benchmark run is asked to do."""

    device: torch.device
    size: str
    settings: dict[str, Any] = field(default_factory=dict)


def is_benchmark(module: ModuleType) -> bool:
    return all(hasattr(module, name) for name in ("DESCRIPTION", "SIZES", "run"))


def discover() -> dict[str, ModuleType]:
    """Every benchmark module in this package, in run order."""
    found = {}
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        if is_benchmark(module):
            found[info.name] = module
    rank = {name: i for i, name in enumerate(PREFERRED_ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def settings_for(module: ModuleType, size: str, overrides: dict[str, Any], strict: bool) -> dict[str, Any]:
    """The module's settings at ``size`` with the ``overrides`` it knows (``strict``: all must be known)."""
    if size not in module.SIZES:
        raise SystemExit(f"error: size {size!r} is not defined for {module.__name__}; valid: {', '.join(module.SIZES)}")
    settings = dict(module.SIZES[size])
    unknown = [key for key in overrides if key not in settings]
    if strict and unknown:
        raise SystemExit(
            f"error: {module.__name__} has no setting {', '.join(unknown)}; valid: {', '.join(settings)}"
        )
    settings.update({key: value for key, value in overrides.items() if key in settings})
    return settings
