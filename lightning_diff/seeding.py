"""Deterministic seeds derived from (run seed, counter) pairs.

Everything random in training and sampling is drawn from a generator seeded by one of these,
so a resumed run, a run under DDP, and a run with another batch size see the same numbers.
"""

import torch

_MASK = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (splitmix64), stable across platforms and runs."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        state = (state * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
        state = (state * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 29
    return state & _MASK


def generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded by :func:`derive_seed` of ``parts``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


def sample_seeds(seed: int, count: int, first: int = 0) -> list[int]:
    """Per-sample seeds: sample i of a run with ``seed`` always gets the same noise."""
    return [derive_seed(seed, i) for i in range(first, first + count)]


# Calibration (any search over a machine's knobs) draws from its own stream: three-part seeds
# derive_seed(CALIBRATION_STREAM, seed, i) where evaluation uses two-part derive_seed(seed, i), so
# a knob is never chosen on the trajectories that later score it (calibrate also checks).
CALIBRATION_STREAM = 0xCA1B


def calibration_seeds(seed: int, count: int) -> list[int]:
    """The per-trajectory seeds of a calibration with ``seed``: disjoint from every sample_seeds stream."""
    return [derive_seed(CALIBRATION_STREAM, seed, i) for i in range(count)]


def seeded_subset(total: int, count: int | None, *parts: int) -> torch.Tensor:
    """Sorted indices of a seeded choice of ``min(count, total)`` of ``range(total)`` (all of them
    with None); the same (total, count, parts) always gives the same indices, and a larger count
    only adds to them."""
    order = torch.randperm(total, generator=generator(*parts))
    return order[: total if count is None else min(count, total)].sort().values
