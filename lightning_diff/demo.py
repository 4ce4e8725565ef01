"""``python -m lightning_diff.demo [overrides]``: the main job behind ``make run``.

Trains the paper's UNet (``experiment=main``) and fits the empirical (Bayes-optimal)
denoiser on the same images, samples both from the same seeds, and prints the fraction of
samples that copy a training image (nearest / second-nearest distance < 1/3) for each.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from lightning_diff.cli import CONF_DIR, exit_on_user_error
from lightning_diff.compose import build
from lightning_diff.images import save_grid
from lightning_diff.metrics.nearest import copy_fraction
from lightning_diff.train import train


def demo(overrides: list[str], root: Path) -> dict[str, float]:
    """Run both models under ``root``; returns the copy fraction of each."""
    fractions = {}
    for name, extra in (("unet", ["denoiser.base_channels=16"]), ("empirical", ["denoiser=empirical"])):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["experiment=main", *overrides, *extra, f"paths.run_dir={root / name}"])
        summary = train(cfg)
        samples = torch.from_numpy(np.load(summary["samples"])["samples"])
        datamodule = build(cfg.data, "data")
        fractions[name] = copy_fraction(samples, datamodule.train_data)
        grid = save_grid(samples, root / name / "samples.png")
        print(f"sample grid:   {grid}\n")
    return fractions


def main() -> None:
    overrides = sys.argv[1:]
    root = Path("runs") / "main"
    for item in overrides:
        if item.startswith("root="):
            root = Path(item.split("=", 1)[1])
    overrides = [item for item in overrides if not item.startswith("root=")]
    fractions = exit_on_user_error(lambda: demo(overrides, root.resolve()))
    print("fraction of samples that copy a training image (d1/d2 < 1/3):")
    print(f"  paper UNet (per level):          {fractions['unet']:.3f}")
    print(f"  empirical (Bayes-optimal) model: {fractions['empirical']:.3f}")


if __name__ == "__main__":
    main()
