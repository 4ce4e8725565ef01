"""PerLevel's stacked (torch.func.vmap) path computes what its per-network loop computes."""

import copy

import pytest
import torch
from torch import nn

from lightning_diff.denoisers import bottleneck, dit, linear, unet
from lightning_diff.denoisers.conditioning import PerLevel, stacking_pays
from lightning_diff.denoisers.contract import Denoiser
from lightning_diff.diffusion.grids import make_grid
from lightning_diff.diffusion.objective import DiffusionObjective

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = make_grid(3)
BUILDERS = {
    "unet-batchnorm": (lambda s: unet.build((1, 8, 8), GRID, num_blocks=1, base_channels=4, stacked=s), (1, 8, 8)),
    "unet-bias-free": (
        lambda s: unet.build((1, 8, 8), GRID, num_blocks=2, base_channels=4, norm="bias_free_batch", stacked=s),
        (1, 8, 8),
    ),
    "toy-mlp": (lambda s: bottleneck.build((2,), GRID, stacked=s), (2,)),
    "linear": (lambda s: linear.build((1, 4, 4), GRID, fit="sgd", stacked=s), (1, 4, 4)),
    "dit": (lambda s: dit.build((1, 8, 8), GRID, conditioning="per_level", patch_size=4, depth=1, width=16, heads=2,
                                stacked=s), (1, 8, 8)),
}


def pair(name: str) -> tuple[Denoiser, Denoiser]:
    build, shape = BUILDERS[name]
    torch.manual_seed(0)
    looped = build(False)
    stacked = build(True)
    if looped.needs_fitting:  # the convex families whiten their inputs from data first
        looped.fit_data(torch.randn(64, *shape))
    stacked.load_state_dict(looped.state_dict())
    for model in (looped, stacked):
        assert isinstance(getattr(model, "inner", model), PerLevel)
    return looped, stacked


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_stacked_training_step_matches_the_loop(name: str) -> None:
    looped, stacked = pair(name)
    shape = BUILDERS[name][1]
    objective = DiffusionObjective(GRID, assignment="every_level")
    x0 = torch.randn(4, *shape)
    for model in (looped, stacked):
        model.train()
        objective.loss(model, x0, seed=0, step=0).backward()
    for (key, a), b in zip(looped.state_dict().items(), stacked.state_dict().values()):
        assert close(a.float(), b.float()), key  # running statistics were written back
    for (key, a), b in zip(looped.named_parameters(), stacked.parameters()):
        assert a.grad is not None and b.grad is not None, key
        assert close(a.grad, b.grad), key


@pytest.mark.parametrize("name", ["unet-batchnorm", "toy-mlp"])
def test_stacked_eval_outputs_match_the_loop_and_state_keys_are_unchanged(name: str) -> None:
    looped, stacked = pair(name)
    shape = BUILDERS[name][1]
    y = torch.randn(3 * 5, *shape)
    t = GRID.levels.float().repeat_interleave(5)
    with torch.no_grad():
        assert close(looped.eval()(y, t), stacked.eval()(y, t))
    assert list(looped.state_dict()) == list(stacked.state_dict())


def test_uneven_or_single_level_batches_take_the_loop_and_agree() -> None:
    looped, stacked = pair("toy-mlp")
    y = torch.randn(7, 2)
    levels = GRID.levels.float()
    for t in (levels[torch.tensor([0, 0, 1, 1, 1, 2, 2])], levels[torch.tensor([2] * 7)]):
        with torch.no_grad():
            assert torch.equal(looped(y, t), stacked(y, t))


def test_auto_stacks_small_networks_on_a_gpu_only() -> None:
    assert stacking_pays(10_000, torch.device("cuda"))
    assert not stacking_pays(10_000_000, torch.device("cuda"))
    assert not stacking_pays(10_000, torch.device("cpu"))


def test_a_stacked_model_deep_copies_and_keeps_one_set_of_parameters() -> None:
    _, stacked = pair("toy-mlp")
    stacked.train()
    objective = DiffusionObjective(GRID, assignment="every_level")
    objective.loss(stacked, torch.randn(4, 2), seed=0, step=0).backward()  # builds the template
    twin = copy.deepcopy(stacked)
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in stacked.parameters())
    assert all(isinstance(m, nn.Module) for m in twin.nets)
