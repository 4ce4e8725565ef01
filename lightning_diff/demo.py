"""``python -m lightning_diff.demo [overrides]``: the main job behind ``make run``.

Trains the paper's UNet (``experiment=main``) and fits the empirical (Bayes-optimal)
denoiser on the same images, samples both from the same seeds, and prints for each the fraction
of samples that copy a training image (nearest / second-nearest distance < 1/3) and the FID
of its samples (when the Inception weights are installed), against the training images since
digits has no test split (``fid_train@<n>``).
"""

import sys
from pathlib import Path

import numpy as np
import torch

from lightning_diff.compose import build
from lightning_diff.figures.grids import save_grid
from lightning_diff.metrics.nearest import copy_fraction
from lightning_diff.run.cli import compose_or_explain, exit_on_user_error
from lightning_diff.training import train


def demo(overrides: list[str], root: Path) -> dict[str, dict[str, float]]:
    """Run both models under ``root``; returns each one's copy fraction and final measurements."""
    results = {}
    for name, extra in (("unet", ["denoiser.base_channels=16"]), ("empirical", ["denoiser=empirical"])):
        cfg = compose_or_explain("train", ["experiment=main", *overrides, *extra, f"paths.run_dir={root / name}"])
        summary = train(cfg)
        samples = torch.from_numpy(np.load(summary["samples"])["samples"])
        datamodule = build(cfg.data, "data")
        results[name] = {"copy_fraction": copy_fraction(samples, datamodule.train_data), **summary.get("measure", {})}
        grid = save_grid(samples, root / name / "samples.png")
        print(f"sample grid:   {grid}\n")
    return results


def summary_lines(results: dict[str, dict[str, float]]) -> list[str]:
    """The closing block: copy fraction and every FID measured, per model."""
    labels = {"unet": "paper UNet (per level):         ", "empirical": "empirical (Bayes-optimal) model:"}
    lines = ["fraction of samples that copy a training image (d1/d2 < 1/3), and realism (FID, lower is better):"]
    for name, label in labels.items():
        # fid_train@n: the data have no test split, so FID is read against training images.
        fids = [f"{key} {value:.1f}" for key, value in results[name].items() if key.startswith(("fid@", "fid_train@"))]
        realism = ", ".join(fids) if fids else "FID not measured (see the warning above)"
        lines.append(f"  {label} copies {results[name]['copy_fraction']:.3f}, {realism}")
    return lines


def main() -> None:
    overrides = sys.argv[1:]
    root = Path("runs") / "main"
    for item in overrides:
        if item.startswith("root="):
            root = Path(item.split("=", 1)[1])
    overrides = [item for item in overrides if not item.startswith("root=")]
    results = exit_on_user_error(lambda: demo(overrides, root.resolve()))
    print("\n".join(summary_lines(results)))


if __name__ == "__main__":
    main()
