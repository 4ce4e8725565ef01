"""Where samples can lie: distances to a subspace, to the training set, to a decoder's image.

A support prediction is a set S; the test is that every sample is within a tolerance of S
while the training data (or another reference) is not. Distances are plain Euclidean norms
over the flattened data, computed in float64.
"""

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_diff.denoisers.contract import Denoiser
from lightning_diff.errors import UserError


def _flat64(points: Tensor) -> Tensor:
    return points.reshape(points.shape[0], -1).to(torch.float64)


def distance_to_subspace(points: Tensor, origin: Tensor, basis: Tensor) -> Tensor:
    """Distance of each point to origin + span(columns of ``basis``); ``basis`` orthonormal (d, k)."""
    centred = _flat64(points) - origin.reshape(1, -1).to(torch.float64)
    basis = basis.to(torch.float64)
    return (centred - (centred @ basis) @ basis.T).norm(dim=1)


def distance_to_set(points: Tensor, reference: Tensor, chunk: int = 2048) -> Tensor:
    """Distance of each point to its nearest row of ``reference`` (chunked over the points)."""
    ref = _flat64(reference)
    flat = _flat64(points)
    return torch.cat([torch.cdist(flat[i : i + chunk], ref).min(dim=1).values for i in range(0, flat.shape[0], chunk)])


class DecoderImage:
    """The image {decoder(z) : z in a box of R^k} of a decoder, as a set to measure distances to.

    Distances are found in two stages: the nearest of a dense grid of decoded codes, then a
    damped Gauss-Newton refinement of each point's code in float64, keeping the better of the
    two. For a k = 1 code (a curve) the grid has ``grid_points`` codes, so the refinement starts
    within one grid step of the closest code.
    """

    def __init__(self, decoder: Callable[[Tensor], Tensor], low: Tensor, high: Tensor, grid_points: int = 20_001) -> None:
        low, high = low.to(torch.float64).reshape(-1), high.to(torch.float64).reshape(-1)
        if low.shape != high.shape or not bool((high > low).all()):
            raise UserError(f"a decoder's code box needs low < high in every coordinate, got {low.tolist()} and {high.tolist()}")
        self.decoder = decoder
        self.low, self.high = low, high
        self.code_dim = low.numel()
        per_axis = max(2, round(grid_points ** (1.0 / self.code_dim)))
        axes = [torch.linspace(float(lo), float(hi), per_axis, dtype=torch.float64) for lo, hi in zip(low, high)]
        self.codes = torch.tensor(list(itertools.product(*[a.tolist() for a in axes])), dtype=torch.float64)
        self.step = (high - low) / (per_axis - 1)
        with torch.no_grad():
            self.images = self.decode(self.codes)

    def decode(self, codes: Tensor) -> Tensor:
        """decoder(codes) flattened, (B, d), in float64."""
        return _flat64(self.decoder(codes))

    def _residual_jacobian(self, codes: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        jac = torch.func.vmap(torch.func.jacrev(lambda z: self.decode(z.unsqueeze(0)).squeeze(0)))(codes)
        return self.decode(codes) - targets, jac  # (B, d), (B, d, k)

    def nearest_codes(self, points: Tensor, iterations: int = 60) -> tuple[Tensor, Tensor]:
        """For each point, a code whose decoding is (locally) closest and that distance."""
        targets = _flat64(points)
        chunk = max(1, 2**24 // max(1, self.images.shape[0]))
        index = torch.cat([torch.cdist(targets[i : i + chunk], self.images).argmin(dim=1) for i in range(0, targets.shape[0], chunk)])
        codes = self.codes[index].clone()
        best = (self.images[index] - targets).norm(dim=1)
        damping = torch.full((targets.shape[0], 1, 1), 1e-6, dtype=torch.float64)
        eye = torch.eye(self.code_dim, dtype=torch.float64)
        for _ in range(iterations):
            residual, jac = self._residual_jacobian(codes, targets)
            residual, jac = residual.detach(), jac.detach()
            normal = jac.transpose(1, 2) @ jac
            scaled = damping * (normal.diagonal(dim1=1, dim2=2).mean(dim=1).reshape(-1, 1, 1) + 1e-12)
            rhs = (jac.transpose(1, 2) @ residual.unsqueeze(-1))
            proposal = codes - torch.linalg.solve(normal + scaled * eye, rhs).squeeze(-1)
            # Stay in the box around the grid's start so the search stays near the grid's answer.
            proposal = torch.minimum(torch.maximum(proposal, self.low - self.step), self.high + self.step)
            with torch.no_grad():
                dist = (self.decode(proposal) - targets).norm(dim=1)
            better = dist < best
            codes = torch.where(better.unsqueeze(1), proposal, codes)
            best = torch.where(better, dist, best)
            damping = torch.where(better.reshape(-1, 1, 1), damping * 0.3, damping * 10.0).clamp(1e-12, 1e8)
        return codes, best

    def distance(self, points: Tensor) -> Tensor:
        """Distance of each point to the decoder's image over the box, (B,)."""
        return self.nearest_codes(points)[1]

    def curve(self) -> Tensor:
        """The decoded grid, (G, d): for a 1-D code, the curve in order of its code."""
        return self.images


def padded_box(codes: Tensor, fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """The bounding box of ``codes`` (B, k), widened by ``fraction`` of its span on each side."""
    codes = codes.reshape(codes.shape[0], -1).to(torch.float64)
    low, high = codes.min(dim=0).values, codes.max(dim=0).values
    span = (high - low).clamp_min(1e-6)
    return low - fraction * span, high + fraction * span


def last_network(denoiser: Denoiser, t_last: float) -> nn.Module:
    """The encoder-decoder network a bottleneck denoiser applies at the last sampling step, ``t_last``."""
    net = denoiser.network_at(t_last)
    if not (hasattr(net, "encoder") and hasattr(net, "decoder")):
        raise UserError(
            f"the denoiser {type(denoiser).__name__} has no encoder/decoder pair; the decoder-image check "
            "needs denoiser=bottleneck or denoiser=bottleneck_image"
        )
    return net


def codes_of(net: nn.Module, y: Tensor, t: float) -> Tensor:
    """The codes the network's encoder gives the noisy inputs ``y`` at noise variance ``t``."""
    flat = y.reshape(y.shape[0], -1)
    embedding = getattr(net, "embedding", None)
    if embedding is not None:
        flat = torch.cat([flat, embedding(torch.full((flat.shape[0],), t, dtype=flat.dtype))], dim=1)
    return net.encoder(flat)
