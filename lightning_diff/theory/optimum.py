"""How far an SGD-trained convex family is from its class optimum, level by level.

The linear and polynomial families have a closed form: per level, the readout that minimises
the training objective exactly (the Wiener filter, the ridge regression on the features). An
SGD run of the same family and knobs is judged by its excess validation loss over that closed
form at every level, on the same held-out images and the same noise: about zero when the
optimisation converged, whatever the data's conditioning (docs/theory.md, "SGD of the convex
families").
"""

from typing import Any

import torch
from torch import Tensor

from lightning_diff.denoisers.contract import Denoiser
from lightning_diff.diffusion.objective import DiffusionObjective


@torch.no_grad()
def excess_over_closed_form(
    trained: Denoiser, closed_form: Denoiser, objective: DiffusionObjective, train_data: Tensor, val_data: Tensor, seed: int
) -> dict[str, Any]:
    """Fit ``closed_form`` on ``train_data``; both models' per-level validation losses (highest
    noise last, as the grid) and the trained one's excess over the closed form, absolute and
    relative to the closed form's loss."""
    closed_form.to(val_data.device).fit_data(train_data.to(val_data.device))
    was_training = trained.training
    trained.eval()
    sgd = objective.per_level_loss(trained, val_data, seed)
    trained.train(was_training)
    optimum = objective.per_level_loss(closed_form, val_data, seed)
    excess = sgd - optimum
    return {
        "closed_form_val_loss_per_level": optimum.tolist(),
        "sgd_val_loss_per_level": sgd.tolist(),
        "excess_val_loss_per_level": excess.tolist(),
        "excess_val_loss_relative_max": float((excess / optimum.clamp_min(1e-12)).max()),
    }
