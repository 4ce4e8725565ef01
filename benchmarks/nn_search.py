"""Exact two-nearest-neighbour search (the memorization metric) against faiss and scikit-learn.

Ours: ``lightning_diff.metrics.nearest.nearest_two`` (float32 products, exact float64 ranks; on
a CPU, pruned by a projected lower bound where the data allows). At the CPU size, a second
case on uniform noise (where nothing can be pruned) shows the cost of trying.
Peers on CPU: faiss-cpu ``IndexFlatL2`` (exhaustive, float32) and scikit-learn's brute-force
``NearestNeighbors``; on CUDA: the plain ``torch.cdist`` + ``topk`` over chunks. All get the
same number of threads. Data: Fashion-MNIST (the 10k test images as queries against the 60k
training images, in [-1, 1]) when Debian's files are present, else uniform noise.

Indices are compared with ours; where a peer differs, the float64 distances of both answers
are compared: equal to float32 rounding means a near-tie the peer broke by rounding.
On CUDA the rows also report achieved TFLOP/s (2 M N d useful operations) against the
card's float32 matmul rate, measured in the same run with a large ``torch.matmul``.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.measure import interleaved, median
from benchmarks.registry import Config
from benchmarks.report import Row
from lightning_diff.metrics.nearest import nearest_two

DESCRIPTION = "exact 2-NN search M samples x N training images: ours vs faiss IndexFlatL2 and sklearn brute force"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"queries": 200, "train": 3000, "side": 8, "repeats": 1, "peak_size": 0, "noise_rows": False},
    "cpu": {"queries": 10_000, "train": 60_000, "side": 28, "repeats": 2, "peak_size": 0, "noise_rows": True},
    "gpu": {"queries": 10_000, "train": 60_000, "side": 28, "repeats": 10, "peak_size": 8192, "noise_rows": False},
}


def data(queries: int, train: int, side: int, images: bool = True) -> tuple[Tensor, Tensor, str]:
    """(queries, training images) flattened, and where they came from (noise unless ``images``)."""
    files = [FASHION_MNIST / f"{name}-images-idx3-ubyte.gz" for name in ("t10k", "train")]
    if images and side == 28 and all(f.is_file() for f in files) and queries <= 10_000 and train <= 60_000:
        from lightning_diff.data.idx import read_idx

        q, x = (torch.from_numpy(read_idx(f)).float().div(127.5).sub(1).reshape(-1, 784) for f in files)
        return q[:queries].contiguous(), x[:train].contiguous(), "Fashion-MNIST"
    gen = torch.Generator().manual_seed(0)
    return (
        torch.rand(queries, side * side, generator=gen) * 2 - 1,
        torch.rand(train, side * side, generator=gen) * 2 - 1,
        "uniform noise",
    )


def faiss_search(threads: int) -> Callable[[Tensor, Tensor], Tensor] | None:
    try:
        import faiss
    except ImportError:
        return None

    def search(q: Tensor, x: Tensor) -> Tensor:
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x.numpy())
        return torch.from_numpy(index.search(q.numpy(), 2)[1])

    return search


def sklearn_search(threads: int) -> Callable[[Tensor, Tensor], Tensor] | None:
    try:
        from sklearn.neighbors import NearestNeighbors
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None

    def search(q: Tensor, x: Tensor) -> Tensor:
        with threadpool_limits(threads):
            index = NearestNeighbors(n_neighbors=2, algorithm="brute", n_jobs=threads).fit(x.numpy())
            return torch.from_numpy(index.kneighbors(q.numpy(), return_distance=False))

    return search


def cdist_search(q: Tensor, x: Tensor, chunk: int = 4096) -> Tensor:
    """What one writes without a metric library: torch.cdist then topk, a chunk of queries at a time."""
    blocks = (q[i : i + chunk] for i in range(0, q.shape[0], chunk))
    return torch.cat([torch.cdist(block, x).topk(2, largest=False).indices for block in blocks])


def disagreements(ours: Tensor, theirs: Tensor, q: Tensor, x: Tensor) -> dict[str, int]:
    """Rows whose indices differ, and how many of them are float32 near-ties in float64."""
    rows = (ours.cpu() != theirs.cpu()).any(dim=1).nonzero(as_tuple=True)[0]
    if rows.numel() == 0:
        return {"differing_rows": 0, "near_ties": 0}
    q64, x64 = q[rows].cpu().double(), x.cpu().double()
    d_ours = (q64[:, None] - x64[ours.cpu()[rows]]).pow(2).sum(-1)
    d_theirs = (q64[:, None] - x64[theirs.cpu()[rows]]).pow(2).sum(-1)
    scale = q64.pow(2).sum(-1, keepdim=True) + x64.pow(2).sum(-1).max()
    tie = ((d_ours - d_theirs).abs() <= 1e-5 * scale).all(dim=1)
    return {"differing_rows": int(rows.numel()), "near_ties": int(tie.sum())}


def matmul_peak(size: int, device: torch.device) -> dict[str, float]:
    """TFLOP/s of a size^3 float32 matmul, IEEE float32 and TF32 (the card's two fp32 rates)."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    out = {}
    previous = torch.get_float32_matmul_precision()
    try:
        for name, precision in (("fp32", "highest"), ("tf32", "high")):
            torch.set_float32_matmul_precision(precision)
            times = interleaved({name: lambda: torch.matmul(a, b)}, device, repeats=10, warmup=3)[name]
            out[name] = 2 * size**3 / median(times) / 1e12
    finally:
        torch.set_float32_matmul_precision(previous)
    return out


def compare(q: Tensor, x: Tensor, config: Config, peer_names: tuple[str, ...], source: str) -> list[Row]:
    """Rows of ours against each named peer on one data set."""
    settings, device = config.settings, config.device
    threads = torch.get_num_threads()
    m, n, d = q.shape[0], x.shape[0], q.shape[1]
    case = f"{m} x {n} x {d} ({source})"
    flops = 2 * m * n * d

    if device.type == "cuda":
        q, x = q.to(device), x.to(device)
        peers: dict[str, Callable[[Tensor, Tensor], Tensor] | None] = {"cdist+topk": cdist_search}
    else:
        peers = {"faiss IndexFlatL2": faiss_search(threads), "sklearn brute": sklearn_search(threads)}
        peers = {name: search for name, search in peers.items() if name in peer_names}

    def ours_search() -> Tensor:
        return nearest_two(q, x)[1]

    ours_index = ours_search()  # also the warm-up
    peak = matmul_peak(settings["peak_size"], device) if device.type == "cuda" and settings["peak_size"] else {}
    rows = []
    for name, search in peers.items():
        if search is None:
            print(f"nn_search: {name} is not installed (pip install -e '.[bench]'); its row is skipped")
            continue
        found = search(q, x)  # also the peer's warm-up
        arms = {"ours": ours_search, "peer": lambda search=search: search(q, x)}
        times = interleaved(arms, device, repeats=settings["repeats"], warmup=0)
        agreement = disagreements(ours_index, found, q, x)
        ours_s = median(times["ours"])
        note = (
            f"{threads} thread(s); indices differ from ours in {agreement['differing_rows']} of {m} rows, "
            f"{agreement['near_ties']} of them float32 near-ties"
        )
        extra: dict[str, Any] = {"agreement": agreement, "ours_s": times["ours"], "peer_s": times["peer"]}
        if peak:
            achieved = flops / ours_s / 1e12
            note += f"; ours {achieved:.1f} TFLOP/s = {achieved / peak['fp32']:.0%} of fp32 matmul "
            note += f"{peak['fp32']:.1f}, "
            note += f"{achieved / peak['tf32']:.0%} of tf32 {peak['tf32']:.1f}"
            extra.update(achieved_tflops=achieved, peak_tflops=peak)
        rows.append(Row("nn_search", case, "s", ours_s, median(times["peer"]), name, ("<=", 1.0), note, extra))
    return rows


def run(config: Config) -> list[Row]:
    settings = config.settings
    q, x, source = data(settings["queries"], settings["train"], settings["side"])
    rows = compare(q, x, config, ("faiss IndexFlatL2", "sklearn brute"), source)
    if source != "uniform noise" and settings["noise_rows"]:
        # Data with no low-dimensional structure: the CPU search's pruning gives up, the full search runs.
        q, x, source = data(settings["queries"], settings["train"], settings["side"], images=False)
        rows += compare(q, x, config, ("faiss IndexFlatL2",), source)
    return rows
