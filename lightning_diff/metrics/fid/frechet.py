"""The Fréchet distance between two Gaussians, computed with symmetric eigensolves."""


import torch
from torch import Tensor


def covariance_root(cov: Tensor) -> Tensor:
    """W (D, r) with W W^T = ``cov`` (symmetric PSD), over its numerically non-zero eigen-directions."""
    values, vectors = torch.linalg.eigh(cov.double())
    keep = values > values.max().clamp_min(0) * values.numel() * torch.finfo(torch.float64).eps
    return vectors[:, keep] * values[keep].sqrt()


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor, root1: Tensor | None = None) -> Tensor:
    """||m1 - m2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) between two Gaussians.

    With C1 = W W^T (``root1``, from :func:`covariance_root`), C1 C2 has the non-zero spectrum
    of the symmetric r x r matrix W^T C2 W, so tr (C1 C2)^(1/2) is the sum of the square roots
    of its eigenvalues: symmetric eigensolves of at most D x D, several times faster than the
    general eigensolver torchmetrics uses on C1 C2, and as exact. With fewer images than
    features, r < D.
    """
    root = covariance_root(cov1) if root1 is None else root1
    middle = root.T @ cov2.double() @ root
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (mean1 - mean2).double().square().sum() + cov1.double().trace() + cov2.double().trace() - 2 * trace_root
