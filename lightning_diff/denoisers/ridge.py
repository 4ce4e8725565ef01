"""Batched ridge regression in primal or dual form, whichever is smaller."""

import torch
from torch import Tensor


def ridge_solve(features: Tensor, targets: Tensor, ridge: float) -> Tensor:
    """Readout M minimising ||features @ M - targets||^2 + lam ||M||^2, batched over leading dims.

    ``features`` is (..., N, F) and ``targets`` (..., N, D); returns (..., F, D). The penalty is
    relative: lam = ridge * trace(Phi^T Phi) / F, so one value suits any feature scale and the
    primal and dual forms solve the same problem. With
    F > N the dual form M = Phi^T (Phi Phi^T + lam I)^-1 Y solves an N x N system instead.
    Computed in float64 for the poorly conditioned polynomial Gram matrices.
    """
    phi = features.double()
    y = targets.double()
    n, f = phi.shape[-2], phi.shape[-1]
    lam = ridge * phi.pow(2).sum(dim=(-2, -1)).clamp_min(1e-30) / f
    if f <= n:
        gram = phi.transpose(-1, -2) @ phi
        eye = torch.eye(f, dtype=phi.dtype, device=phi.device)
        solution = torch.linalg.solve(gram + lam[..., None, None] * eye, phi.transpose(-1, -2) @ y)
    else:
        kernel = phi @ phi.transpose(-1, -2)
        eye = torch.eye(n, dtype=phi.dtype, device=phi.device)
        solution = phi.transpose(-1, -2) @ torch.linalg.solve(kernel + lam[..., None, None] * eye, y)
    return solution.to(targets.dtype)
