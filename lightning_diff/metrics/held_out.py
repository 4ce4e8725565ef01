"""The real images that the realism metrics (FID, KID, PRDC) compare generated images with.

They are held out: a seeded subset of ``metrics.reference.count`` images of the dataset's test
split, which no run trains on (training uses the training split only). The subset depends on
``metrics.reference.seed`` alone, not on the run's data seed or size, so every run of a study is
read against the same images. A dataset without a test split falls back to its training images,
said once and marked in every metric's name (``fid_train@n``): those numbers read closeness to
the training set, not realism.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from lightning_diff.errors import UserError
from lightning_diff.seeding import seeded_subset

SETTINGS_KEY = "metrics.reference"
SETTINGS = {"count": 1000, "seed": 0}
TRAIN_MARKER = "_train"
_TRAIN_STREAM = 0x7EA1


class DataSplits(Protocol):
    """What a datamodule offers the reference choice."""

    @property
    def train_data(self) -> Tensor: ...

    def test_subset(self, count: int | None, seed: int) -> Tensor | None: ...


@dataclass(frozen=True)
class Reference:
    """The reference images (n, C, H, W) in [-1, 1] and what they are."""

    images: Tensor
    held_out: bool
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def marker(self) -> str:
        """What the metric names carry: nothing for held-out images, ``_train`` for training images."""
        return "" if self.held_out else TRAIN_MARKER

    def note(self) -> str | None:
        """What to tell the user once about this reference, or None when it is held out."""
        if self.held_out:
            return None
        return (
            f"the dataset has no test split, so FID, KID and PRDC compare the samples with {self.images.shape[0]} of "
            f"its training images and are named with {TRAIN_MARKER} (fid{TRAIN_MARKER}@n, ...): they say how close the "
            "samples come to the training set, not how realistic they are against held-out images"
        )


def reference_settings(settings: Mapping[str, Any] | None) -> tuple[int | None, int]:
    """The checked ``(count, seed)`` of the ``metrics.reference`` node."""
    given = dict(settings or {})
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise UserError(
            f"{', '.join(f'{SETTINGS_KEY}.{key}' for key in unknown)}: not a setting; valid: {', '.join(SETTINGS)}"
        )
    count, seed = {**SETTINGS, **given}["count"], {**SETTINGS, **given}["seed"]
    if count is not None and (not isinstance(count, int) or count < 2):
        raise UserError(f"{SETTINGS_KEY}.count={count!r} must be an integer >= 2, or null for the whole test split")
    if not isinstance(seed, int):
        raise UserError(f"{SETTINGS_KEY}.seed={seed!r} must be an integer")
    return count, seed


def choose_reference(data: DataSplits, settings: Mapping[str, Any] | None) -> Reference:
    """The held-out reference of ``data`` (its test split), else its training images, marked."""
    count, seed = reference_settings(settings)
    held_out = data.test_subset(count, seed)
    if held_out is not None:
        return Reference(held_out, True, {"split": "test", "count": held_out.shape[0], "seed": seed})
    train = data.train_data
    images = train[seeded_subset(train.shape[0], count, seed, _TRAIN_STREAM)]
    return Reference(images, False, {"split": "train", "count": images.shape[0], "seed": seed})
