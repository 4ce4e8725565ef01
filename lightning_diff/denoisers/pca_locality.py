"""Lukoianov et al.'s data-driven locality denoiser (NeurIPS 2025, arXiv 2509.09672).

The locality of trained denoisers already shows in the data's optimal linear denoiser. At
noise variance t (a = sqrt(1 - t), variance-exploding sigma^2 = t / a^2) the Wiener filter of
the training covariance Sigma = U diag(lam) U^T is

    W_t = Sigma (Sigma + sigma^2 I)^-1 = U diag(lam / (lam + sigma^2)) U^T,

and column m of W_t says which input pixels the optimal linear denoiser reads for output pixel
m. Normalised by each input pixel's own gain and binarised at a fraction ``threshold`` (tau)
of the largest entry, it becomes a neighbourhood mask per output pixel:

    M~_t[n, m] = W_t[n, m] / W_t[n, n],   M_t[n, m] = 1{ |M~_t[n, m]| >= tau max_{n', m'} |M~_t[n', m']| }

(tau = 0 keeps the real-valued M~_t). Output pixel m is then the posterior mean of pixel m of
the training images, each weighted by its squared distance to y over m's neighbourhood:

    D(y, t)[m] = sum_i softmax_i( -d_i[m] / (2 t T) ) x_i[m],   d_i[m] = sum_n M_t[n, m] (y_n - a x_i[n])^2

with temperature T (1 in the paper). The orientation (the sum over the mask's first index,
normalised by that index's gain) and tau = 0.02 are those of the authors' released code; the
posterior is exact over all N training images (their code averages per-batch softmaxes over
batches of 256-512 images, an approximation this implementation does not copy). Derivation and
choices: docs/theory.md, "Data-driven locality".
"""

import math

import torch
from torch import Tensor

from lightning_diff.denoisers.closed_form import ClosedFormDenoiser
from lightning_diff.denoisers.contract import check_choice, check_only_fit
from lightning_diff.denoisers.registry import family
from lightning_diff.denoisers.training_set import LOG2_E, softmax_step
from lightning_diff.diffusion.grids import NoiseGrid
from lightning_diff.errors import UserError

# Largest (samples x images x pixels) block of logits per chunk of training images: 16 MB.
BLOCK_ELEMENTS = 1 << 22
# A gain this small means the pixel is (numerically) constant in the training set: its row of
# the mask is left unnormalised instead of divided by ~0 (the authors' eps).
MIN_GAIN = 1e-6


class PCALocalityDenoiser(ClosedFormDenoiser):
    """Stores the training set and its covariance eigenbasis; masks are made per noise level."""

    accepts_any_t = True

    def __init__(self, data_shape: tuple[int, ...], threshold: float, temperature: float) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.threshold = threshold
        self.temperature = temperature
        dim = math.prod(self.data_shape)
        self.register_buffer("data", torch.zeros(0, dim))
        self.register_buffer("eigvals", torch.zeros(dim))
        self.register_buffer("eigvecs", torch.zeros(dim, dim))

    def _fit(self, x0: Tensor) -> None:
        flat = x0.reshape(x0.shape[0], -1).double()
        centred = flat - flat.mean(dim=0)
        eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / flat.shape[0])
        self.data = flat.float().to(self.data.device)
        self.eigvals.copy_(eigvals.clamp_min(0))
        self.eigvecs.copy_(eigvecs)

    def mask(self, t: float) -> Tensor:
        """M_t (n, n): entry [n, m] weights input pixel n in output pixel m's distance. Made at
        every call: n^3 operations, small beside the N n^2 of the denoising itself."""
        basis, eigvals = self.eigvecs.double(), self.eigvals.double()
        wiener = (basis * (eigvals / (eigvals + t / (1.0 - t)))) @ basis.T
        gain = wiener.diagonal().clone()
        gain[gain.abs() < MIN_GAIN] = 1.0
        normalised = wiener / gain[:, None]
        if self.threshold > 0:
            normalised = (normalised.abs() >= self.threshold * normalised.abs().max()).double()
        return normalised.float()

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        if self.data.shape[0] == 0:
            raise UserError("the pca_locality denoiser has no training data: fit it (denoiser.fit=closed_form) first")
        flat = y.reshape(y.shape[0], -1).float()
        out = torch.empty_like(flat)
        for level in torch.unique(t).tolist():
            rows = (t == level).nonzero(as_tuple=True)[0]
            out[rows] = self.denoise_level(flat[rows], float(level))
        return out.reshape(y.shape).to(y.dtype)

    def denoise_level(self, flat: Tensor, t: float) -> Tensor:
        """Rows of ``flat`` (B, n) at noise variance ``t``: a running log-sum-exp over chunks of
        training images. -d_i / (2t) differs from (a (y * x_i) M - a^2 (x_i^2) M / 2) / t by a
        term that is the same for every i (sum_n M[n, m] y_n^2), so those are the logits."""
        mask, a = self.mask(t), math.sqrt(1.0 - t)
        scale = LOG2_E / (t * self.temperature)
        batch, dim = flat.shape
        chunk = max(1, BLOCK_ELEMENTS // (batch * dim))
        running_max = torch.full((batch, 1, dim), -math.inf, device=flat.device)
        total = torch.zeros(batch, 1, dim, device=flat.device)
        acc = torch.zeros(batch, 1, dim, device=flat.device)
        for start in range(0, self.data.shape[0], chunk):
            images = self.data[start : start + chunk]
            products = (flat[:, None, :] * images[None]).reshape(-1, dim) @ mask
            norms = images.pow(2) @ mask
            logits = (a * scale) * products.reshape(batch, -1, dim) - (0.5 * a * a * scale) * norms
            running_max, rescale, weights = softmax_step(running_max, logits)
            total = total * rescale + weights.sum(dim=1, keepdim=True)
            acc = acc * rescale + (weights * images[None]).sum(dim=1, keepdim=True)
        return (acc / total).squeeze(1)


@family("pca_locality")
def build(
    data_shape: tuple[int, ...],
    grid: NoiseGrid,
    *,
    fit: str = "closed_form",
    conditioning: str = "per_level",
    threshold: float = 0.02,
    temperature: float = 1.0,
) -> PCALocalityDenoiser:
    """Lukoianov et al.'s analytic denoiser, fitted from the training set (no SGD form)."""
    check_only_fit(fit, "closed_form", "pca_locality")
    check_choice("conditioning", conditioning, ("per_level",), "pca_locality (an analytic machine, defined at any t)")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise UserError(f"denoiser.threshold={threshold!r} must lie in [0, 1): the mask keeps entries >= threshold x the largest")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise UserError(f"denoiser.temperature={temperature!r} must be > 0 (1: the posterior itself)")
    return PCALocalityDenoiser(data_shape, float(threshold), float(temperature))
