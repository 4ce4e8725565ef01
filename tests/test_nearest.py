"""The float32 nearest-neighbour search returns float64's answer, ties by lower index."""

import pytest
import torch

from lightning_diff.metrics import nearest
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
