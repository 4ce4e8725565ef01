"""The float32 nearest-neighbour search returns float64's answer, ties by lower index."""

import pytest
import torch

from lightning_diff.metrics import nearest, projected_bound
from lightning_diff.metrics.nearest import nearest_two

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct float64 distances, two smallest, ties by lower index."""
    s, x = samples.reshape(len(samples), -1).double(), train.reshape(len(train), -1).double()
    d = (s[:, None] - x[None]).pow(2).sum(-1)
    order = d.argsort(dim=1, stable=True)[:, :2]
    return (d.gather(1, order) / s.shape[1]).sqrt().float(), order


@pytest.mark.parametrize("chunks", [(None, None), (7, 50), (1000, 1000)])
def test_matches_float64_with_duplicates_and_near_ties(chunks: tuple[int | None, int | None]) -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(60, 1, 6, 6, generator=gen) * 2 - 1
    # Every image three times (exact ties), plus copies moved by less than float32 can resolve.
    train = torch.cat([base, base, base, base + 1e-7 * torch.randn(base.shape, generator=gen)])
    samples = torch.cat([base[:20] + 0.01 * torch.randn(20, 1, 6, 6, generator=gen),
                         torch.rand(20, 1, 6, 6, generator=gen) * 2 - 1])
    distances, indices = nearest_two(samples, train, *chunks)
    expected_d, expected_i = reference(samples, train)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(distances, expected_d, rtol=1e-6, atol=1e-7)


def test_rows_that_fail_the_rounding_check_are_searched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    train = torch.rand(300, 16, generator=gen) * 2 - 1
    samples = torch.rand(25, 16, generator=gen) * 2 - 1
    searched: list[torch.dtype] = []
    search = nearest._search

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        searched.append(args[2])
        return search(*args, **kwargs)

    monkeypatch.setattr(nearest, "_search", recording)
    monkeypatch.setattr(nearest, "_rounding_bound", lambda *args: torch.full((len(args[2]),), torch.inf))
    _, indices = nearest_two(samples, train)
    assert searched == [torch.float32, torch.float64]
    assert torch.equal(indices, reference(samples, train)[1])


def test_both_blas_paths_give_the_same_products() -> None:
    a, b = torch.rand(5, 40), torch.rand(7, 40)
    assert torch.allclose(nearest._torch_product(a, b), nearest._numpy_product(a, b), rtol=1e-6)


def low_dimensional_images(count: int, generator: torch.Generator, dim: int = 600) -> torch.Tensor:
    """Images near a 20-dimensional subspace (as real images are), in [-1, 1]."""
    basis = torch.randn(20, dim, generator=torch.Generator().manual_seed(99)) / 20**0.5
    codes = torch.randn(count, 20, generator=generator)
    return (codes @ basis + 0.05 * torch.randn(count, dim, generator=generator)).clamp(-1, 1)


def test_projected_bound_never_exceeds_the_distance() -> None:
    gen = torch.Generator().manual_seed(2)
    train, samples = low_dimensional_images(500, gen), low_dimensional_images(40, gen)
    bound = projected_bound.ProjectedBound(train, dims=16)
    cs, cx = bound.coordinates(samples, nearest._torch_product), bound.coordinates(train, nearest._torch_product)
    lower = torch.cdist(cs, cx).pow(2)
    exact = torch.cdist(samples.double(), train.double()).pow(2)
    assert (lower <= exact + 1e-9).all()
    assert (lower > 0.5 * exact).float().mean() > 0.9  # and it is tight on such data


@pytest.mark.parametrize("dims", [4, 32, 128])
def test_pruned_search_matches_float64_with_duplicates_and_near_ties(dims: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projected_bound, "DIMS", dims)
    gen = torch.Generator().manual_seed(3)
    base = low_dimensional_images(400, gen)
    train = torch.cat([base, base, base[:100] + 1e-7 * torch.randn(100, base.shape[1], generator=gen)])
    samples = torch.cat([base[:30] + 0.01 * torch.randn(30, base.shape[1], generator=gen), low_dimensional_images(70, gen)])
    answered = []
    pruned = projected_bound.pruned_nearest_two

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = pruned(*args, **kwargs)
        answered.append(float(result[2].float().mean()))
        return result

    monkeypatch.setattr(nearest, "pruned_nearest_two", recording)
    distances, indices = nearest_two(samples, train, prune=True)
    expected_d, expected_i = reference(samples, train)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(distances, expected_d, rtol=1e-6, atol=1e-7)
    assert answered == [1.0]  # the bound pruned every row; the full search answered none


def test_pruned_search_hands_unstructured_data_to_the_full_search(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(4)
    train, samples = torch.rand(3000, 600, generator=gen) * 2 - 1, torch.rand(50, 600, generator=gen) * 2 - 1
    full = nearest._full_search
    handed: list[int] = []

    def recording(s, *args, **kwargs):  # type: ignore[no-untyped-def]
        handed.append(s.shape[0])
        return full(s, *args, **kwargs)

    monkeypatch.setattr(nearest, "_full_search", recording)
    _, indices = nearest_two(samples, train, prune=True)
    assert handed == [50]  # uniform noise has no principal subspace: nothing is pruned
    assert torch.equal(indices, reference(samples, train)[1])


def test_pruning_is_chosen_only_where_it_pays() -> None:
    assert projected_bound.worth_pruning(torch.zeros(10_000, 784), torch.zeros(60_000, 784))
    assert not projected_bound.worth_pruning(torch.zeros(10_000, 64), torch.zeros(60_000, 64))
    assert not projected_bound.worth_pruning(torch.zeros(10_000, 784), torch.zeros(1000, 784))


def test_pruned_search_of_float64_inputs_is_not_misled_by_float32_rounding() -> None:
    half = 2.0**-24  # half a float32 step at 1.0: values above 1 + half round up, below it down

    def image(value: float) -> torch.Tensor:
        return torch.tensor([value, 0.0, 0.0, 0.0], dtype=torch.float64)

    sample = image(1 + half + 1e-15)[None]  # rounds up in float32
    # Image 0 is the nearest, but rounds down; images 1 and 2 round with the sample, so float32
    # would call them identical to it. Far images make the search prune.
    train = torch.stack([image(1 + half - 1e-15), image(1 + 2 * half), image(1 + 2 * half + 1e-15)]
                        + [image(-1.0 + 0.002 * i) for i in range(100)])
    _, indices = nearest_two(sample, train, prune=True)
    assert indices.tolist() == [[0, 1]] == reference(sample, train)[1].tolist()
