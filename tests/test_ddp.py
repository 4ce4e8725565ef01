"""Issue #6, DDP: local ranks (ddp_spawn) reproduce one process; ranks and requeued jobs
share one W&B run id."""

import json
import multiprocessing
import time

import numpy as np
import pytest
import torch

from conftest import LINEAR_SGD, train_config
from lightning_diff.errors import UserError
from lightning_diff.run.distributed import local_world_size
from lightning_diff.run.rundir import checkpoint_path, wandb_run_id
from lightning_diff.training import train
from wandb_offline import offline_runs, run_record

DDP_SPAWN = ["trainer.strategy=ddp_spawn", "trainer.devices=2"]


def _weights(run_dir):
    checkpoint = torch.load(checkpoint_path(run_dir), map_location="cpu", weights_only=True)
    return checkpoint["global_step"], checkpoint["state_dict"], checkpoint["current_model_state"]


@pytest.mark.slow
def test_ddp_spawn_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    single = train(train_config(tmp_path / "single", *LINEAR_SGD))
    started = time.time()
    ddp = train(train_config(tmp_path / "ddp", *LINEAR_SGD, *DDP_SPAWN, "logger=wandb"))
    print(f"2-rank ddp_spawn run: {time.time() - started:.1f} s")

    step_1, ema_1, raw_1 = _weights(tmp_path / "single")
    step_2, ema_2, raw_2 = _weights(tmp_path / "ddp")
    assert step_1 == step_2 == 50
    worst = 0.0
    for one, two in ((raw_1, raw_2), (ema_1, ema_2)):
        assert one.keys() == two.keys()
        for key in one:
            worst = max(worst, float((one[key].double() - two[key].double()).abs().max()))
            torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0)
    print(f"largest parameter difference (raw and EMA): {worst:.2e}")

    run_json = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run_json["world_size"] == 2 and single["world_size"] == 1
    assert run_json["global_step"] == 50 and run_json["metrics"] == ddp["metrics"]
    for key, value in single["metrics"].items():
        assert ddp["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    np.testing.assert_allclose(
        np.load(tmp_path / "ddp" / "samples.npz")["samples"],
        np.load(tmp_path / "single" / "samples.npz")["samples"],
        atol=1e-4,
    )
    # Logged once: one W&B run (rank 0's), whose id is the one kept in the run directory.
    (wandb_run,) = offline_runs(tmp_path / "ddp")
    assert run_record(wandb_run).run_id == (tmp_path / "ddp" / "wandb_run_id").read_text().strip()


@pytest.mark.slow
def test_ddp_spawn_global_batch_must_divide_by_the_world_size(tmp_path):
    config = train_config(tmp_path, *LINEAR_SGD, *DDP_SPAWN, "data.batch_size=63")
    with pytest.raises(UserError, match=r"data.batch_size=63 .* must divide by the world size 2"):
        train(config)


@pytest.mark.parametrize(
    ("devices", "num_nodes", "expected"),
    [(2, 1, 2), ("3", 1, 3), ([0, 1], 1, 2), ("auto", 1, None), (0, 1, None), (2, 2, None)],
)
def test_ddp_spawn_needs_a_local_process_count(devices, num_nodes, expected):
    trainer = {"devices": devices, "num_nodes": num_nodes}
    if expected is None:
        with pytest.raises(UserError, match=r"trainer\.(devices|num_nodes)"):
            local_world_size(trainer)
    else:
        assert local_world_size(trainer) == expected


def _ask_for_id(run_dir, start_at, results):
    while time.time() < start_at:
        pass
    results.put(wandb_run_id(run_dir))


def test_concurrent_ranks_agree_on_one_wandb_run_id(tmp_path):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 0.5
    workers = [context.Process(target=_ask_for_id, args=(tmp_path, start_at, results)) for _ in range(8)]
    for worker in workers:
        worker.start()
    ids = {results.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join()
    assert ids == {(tmp_path / "wandb_run_id").read_text().strip()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wandb_run_id"]  # no temporary files left


def test_a_wandb_sweep_agents_run_id_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", "agent123")
    assert wandb_run_id(tmp_path) == "agent123"
    monkeypatch.setenv("WANDB_RUN_ID", "other")
    assert wandb_run_id(tmp_path) == "agent123"  # the stored id wins, as on a requeue
