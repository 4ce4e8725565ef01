"""How a denoiser learns which noise level it is at: the three conditioning modes.

- ``per_level``: K independent networks, one per grid level, none sees t (the paper);
- ``conditioned``: one network that receives a noise embedding (DDPM / EDM practice);
- ``blind``: one network that never sees t (Kadkhodaie et al. 2024).

:func:`wrap` turns a family's network into the :class:`~lightning_diff.denoisers.contract.Denoiser`
of the requested mode.
"""

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lightning_diff.denoisers.contract import CONDITIONING_MODES, Denoiser, check_choice
from lightning_diff.denoisers.preconditioning import (
    PRECONDITIONINGS,
    LevelPreconditioned,
    Residual,
    TimePreconditioned,
)
from lightning_diff.diffusion.edm import check_sigma_data
from lightning_diff.diffusion.grids import NoiseGrid, level_index
from lightning_diff.errors import UserError

# Per-network size up to which "auto" stacks the K networks on a GPU: on an H100 stacking
# trained 10 per-level networks 1.4x to 1.55x faster than the loop for sizes from the 2-D toy
# MLP up to the paper's 1.9M-parameter UNet (docs/performance.md); larger ones are unmeasured.
STACKED_MAX_PARAMETERS = 2_000_000


def stacking_pays(parameters_per_network: int, device: torch.device) -> bool:
    """Whether ``stacked="auto"`` takes the stacked path (benchmarks/per_level_training.py).

    On a GPU, K networks each launch kernels too small to fill it, so one stacked call wins.
    On a CPU the loop was as fast or faster except for tiny conv nets at small batches (there
    ``stacked=true`` pays), so auto keeps the loop.
    """
    return device.type == "cuda" and parameters_per_network <= STACKED_MAX_PARAMETERS


class PerLevel(Denoiser):
    """K networks ``net_k(y)``; each sample is routed to the network of its grid level.

    A batch that holds several levels in equal contiguous blocks (training's ``every_level``
    layout) is evaluated in one of two ways that compute the same function:

    - loop: one call per network, so K sets of small kernels;
    - stacked: the K networks' weights are stacked and one ``torch.func.vmap``-ed call runs
      each layer once for all of them (matmuls become batched matmuls, convs grouped convs).
      Buffers (batch-norm statistics) are stacked too and written back after a training call.
      It assumes the K networks share one architecture, as :func:`wrap` builds them.

    ``stacked``: ``"auto"`` takes the stacked path where it was measured to pay
    (:func:`stacking_pays`), ``True`` / ``False`` force it on or off.
    """

    def __init__(self, nets: list[nn.Module], grid: NoiseGrid, stacked: bool | str = "auto") -> None:
        super().__init__()
        if len(nets) != len(grid):
            raise ValueError(f"{len(nets)} networks for a grid of {len(grid)} levels")
        if stacked not in (True, False, "auto"):
            raise UserError(f"denoiser.stacked={stacked!r} is not valid; choose true, false or auto")
        self.nets = nn.ModuleList(nets)
        self.stacked = stacked
        self.parameters_per_network = sum(p.numel() for p in nets[0].parameters())
        self.register_buffer("levels", grid.levels.clone().float())
        # A weightless copy of one network that torch.func calls with the stacked weights; held
        # in a tuple so it stays out of the module tree (state_dict, parameters(), .to()).
        self._template: tuple[nn.Module, list[str], list[str]] | None = None

    def network_at(self, t: float) -> nn.Module:
        return self.nets[int(level_index(self.levels, torch.tensor([t]))[0])]

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        idx = level_index(self.levels, t)
        levels, counts = torch.unique_consecutive(idx, return_counts=True)
        if levels.numel() == torch.unique(levels).numel():
            # Rows come in one contiguous block per level (the every_level layout): slice, no scatter.
            order, sizes = levels.tolist(), counts.tolist()
            if len(order) > 1 and len(set(sizes)) == 1 and self._use_stacked(y):
                return self._stacked(y, order)
            blocks = torch.split(y, sizes)
            return torch.cat([self.nets[k](block) for k, block in zip(order, blocks)])
        out = torch.empty_like(y)
        for k in torch.unique(idx).tolist():
            rows = (idx == k).nonzero(as_tuple=True)[0]
            out[rows] = self.nets[k](y[rows])
        return out

    def _use_stacked(self, y: Tensor) -> bool:
        if self.stacked == "auto":
            return stacking_pays(self.parameters_per_network, y.device)
        return bool(self.stacked)

    def _stacked(self, y: Tensor, order: list[int]) -> Tensor:
        if self._template is None:
            template = copy.deepcopy(self.nets[0]).to("meta")
            param_names = [name for name, _ in template.named_parameters()]
            buffer_names = [name for name, _ in template.named_buffers()]
            self._template = (template, param_names, buffer_names)
        template, param_names, buffer_names = self._template
        nets = [self.nets[k] for k in order]
        template.train(nets[0].training)
        # torch.stack is differentiable: each network's own parameters receive their gradients.
        params = dict(zip(param_names, (torch.stack(group) for group in zip(*(n.parameters() for n in nets)))))
        own_buffers = [list(n.buffers()) for n in nets]
        buffers = dict(zip(buffer_names, (torch.stack(group) for group in zip(*own_buffers))))

        def call(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(template, (p, b), (x,))

        out = vmap(call)(params, buffers, y.reshape(len(nets), -1, *y.shape[1:]))
        if template.training and buffer_names:
            # Training updated the stacked copies of the running statistics; hand them back.
            with torch.no_grad():
                stacked = list(buffers.values())
                torch._foreach_copy_(
                    [buffer for own in own_buffers for buffer in own],
                    [copies[k] for k in range(len(nets)) for copies in stacked],
                )
        return out.reshape(y.shape)


class OneNetwork(Denoiser):
    """One network for every level: ``network_at`` any t is that network."""

    accepts_any_t = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def network_at(self, t: float) -> nn.Module:
        return self.net


class Blind(OneNetwork):
    """One network that ignores the noise level."""

    conditioning = "blind"

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return self.net(y)


class Conditioned(OneNetwork):
    """One network ``net(y, t)`` that receives the noise level (through its own embedding)."""

    conditioning = "conditioned"

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return self.net(y, t)


class NoiseEmbedding(nn.Module):
    """Fourier features of c_noise = ln(sigma) / 4 (Karras et al. 2022), then an MLP."""

    def __init__(self, dim: int, num_frequencies: int = 32) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), num_frequencies))
        self.register_buffer("freqs", freqs)
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        c_noise = 0.125 * torch.log(t / (1.0 - t))  # ln(sigma) / 4 with sigma^2 = t / (1 - t)
        angles = c_noise.reshape(-1, 1).float() * self.freqs.reshape(1, -1)
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=1))


def wrap(
    conditioning: str,
    grid: NoiseGrid,
    make_net: Callable[[], nn.Module],
    make_conditioned_net: Callable[[], nn.Module] | None = None,
    family: str = "this family",
    stacked: bool | str = "auto",
    preconditioning: str = "none",
    sigma_data: float = 0.5,
) -> Denoiser:
    """The family's :class:`Denoiser` in the requested conditioning mode.

    ``make_net`` builds one network ``net(y)``; ``make_conditioned_net`` one ``net(y, t)``
    (None: the family has no conditioned form); ``stacked`` is :class:`PerLevel`'s evaluation
    choice (per_level mode only). ``preconditioning="edm"`` wraps each network as
    :mod:`lightning_diff.denoisers.preconditioning` says (data standard deviation ``sigma_data``).
    """
    modes = CONDITIONING_MODES if make_conditioned_net is not None else ("per_level", "blind")
    check_choice("conditioning", conditioning, modes, family)
    check_choice("preconditioning", preconditioning, PRECONDITIONINGS)
    edm = preconditioning == "edm"
    if edm:
        check_sigma_data(sigma_data)

    def skip(net: nn.Module) -> nn.Module:
        return Residual(net) if preconditioning == "residual" else net

    if conditioning == "per_level":
        nets = [skip(make_net()) for _ in range(len(grid))]
        if edm:
            nets = [LevelPreconditioned(net, float(t), sigma_data) for net, t in zip(nets, grid.levels.tolist())]
        return PerLevel(nets, grid, stacked)
    if conditioning == "blind":
        if edm:
            raise UserError(
                "denoiser.preconditioning=edm scales by the noise level, which a blind denoiser never sees; "
                "use preconditioning=residual (or none) with conditioning=blind"
            )
        return Blind(skip(make_net()))
    net = skip(make_conditioned_net())
    return Conditioned(TimePreconditioned(net, sigma_data) if edm else net)
