"""Issue #6 and #12 on a real SLURM (localhost, one node and a two-node partition): the sbatch templates in slurm/, requeue,
job arrays over a sweep, Hydra's submitit launcher; the sweep files and launcher configs.

The cluster (tests/slurm_cluster.py) is started once for this module and stopped at its end.
Without SLURM, munge or root these tests skip; in CI (LIGHTNING_DIFF_REQUIRE_SYSTEM=1) they fail.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import LINEAR_SGD, REPO, require_system, train_config
from lightning_diff.errors import UserError
from lightning_diff.run.cli import CONF_DIR
from lightning_diff.sweep import expand, run_overrides
from lightning_diff.training import train
from slurm_cluster import LocalSlurm
from wandb_offline import offline_runs, run_record

SLURM_DIR = REPO / "slurm"
SWEEPS = REPO / "sweeps"
# A tiny CPU experiment: the paper's 2-D bottleneck per level on two moons.
TINY = [
    "data=toy2d",
    "denoiser=bottleneck",
    "data.num_train=256",
    "data.num_val=64",
    "data.batch_size=32",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "num_samples=16",
    # The measurement callback has its own DDP test (test_ddp.py); here it would only cost time.
    "++callbacks.measure.enabled=false",
]


@pytest.fixture(scope="module")
def cluster():
    require_system("slurm")
    # Not under pytest's 0700 temp root: munged wants its socket's directories reachable by all.
    root = Path(tempfile.mkdtemp(prefix="ld-slurm-"))
    slurm = LocalSlurm(root)
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


def job_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a submission: this checkout, run directories under tmp_path, W&B offline, the
    W&B service token of a process that has opened a W&B run (the jobs must start their own), and
    where DDP ranks meet: the test nodes' names do not resolve (they are all this host); on a real
    cluster Lightning takes the first node of SLURM_NODELIST."""
    return {
        "LD_REPO": str(REPO),
        "LD_RUNS_ROOT": str(tmp_path / "runs"),
        "WANDB_MODE": "offline",
        "WANDB_SERVICE": "3-999999-unix-/nonexistent/wandb-service.sock",
        "MASTER_ADDR": "127.0.0.1",
    }


def log_of(path: Path) -> str:
    return path.read_text() if path.is_file() else f"(no log at {path})"


def dry_run(template: str, *args: str, env: dict[str, str]) -> list[str]:
    """The command a template prints with DRY_RUN=1, split as bash would split it."""
    result = subprocess.run(
        ["bash", str(SLURM_DIR / template), *args],
        cwd=REPO,
        env={**os.environ, **env, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return shlex.split(lines[0])


def venv_python() -> str:
    """The python the templates run: slurm/site.sh activates the checkout's .venv when it has one."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else shutil.which("python")


# ---------------------------------------------------------------- templates without a cluster


def test_train_template_dry_run_prints_the_srun_command_and_runs_nothing(tmp_path):
    env = job_env(tmp_path) | {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ld_train", "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NUM_NODES": "2",
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
    }
    # A fake srun that would leave a trace if the dry run ran it.
    fake = tmp_path / "srun"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/srun-ran\n")
    fake.chmod(0o755)
    argv = dry_run("train.sbatch", "experiment=quickstart", "logger.group=two words", env=env)
    assert argv == [
        "srun", "--kill-on-bad-exit=1", venv_python(), "-m", "lightning_diff.train",
        "experiment=quickstart", "logger.group=two words",
        "trainer.strategy=ddp", "trainer.num_nodes=2", "trainer.devices=4",
        f"hydra.run.dir={tmp_path}/runs/slurm/ld_train-4242",
    ]
    assert not (tmp_path / "srun-ran").exists()


def test_sweep_array_and_wandb_agent_templates_render_their_commands(tmp_path):
    env = job_env(tmp_path) | {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_JOB_ID": "77"}
    argv = dry_run("sweep_array.sbatch", "sweeps/paper_unet.yaml", "trainer.max_steps=5", env=env)
    assert argv[:5] == ["srun", "--kill-on-bad-exit=1", venv_python(), "-m", "lightning_diff.train"]
    assert argv[5:] == [
        "--config-dir", str(SWEEPS), "--config-name", "paper_unet",
        "experiment=paper/unet/width_half", "trainer.max_steps=5", "logger.group=paper_unet-77",
        "trainer.strategy=ddp", "trainer.num_nodes=1", "trainer.devices=1",
        f"hydra.run.dir={tmp_path}/runs/slurm/paper_unet-77/9",
    ]
    assert run_overrides(SWEEPS / "paper_unet.yaml", 9) == ["experiment=paper/unet/width_half"]

    agent = dry_run("wandb_agent.sbatch", "me/lightning_diff/abc123", "3", env=job_env(tmp_path))
    assert Path(agent[0]).name == "wandb" and agent[1:] == ["agent", "--count", "3", "me/lightning_diff/abc123"]


def test_templates_name_what_is_missing(tmp_path):
    outside = subprocess.run(
        ["bash", str(SLURM_DIR / "sweep_array.sbatch"), "sweeps/paper_unet.yaml"],
        env={**os.environ, **job_env(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )
    assert outside.returncode == 2 and "--array=0-<runs - 1>" in outside.stderr
    elsewhere = subprocess.run(
        ["bash", str(SLURM_DIR / "train.sbatch")],
        env={**os.environ, "LD_REPO": str(tmp_path), "DRY_RUN": "1"},
        capture_output=True, text=True, timeout=60,
    )
    assert elsewhere.returncode == 2 and "not a lightning_diff checkout" in elsewhere.stderr


# ---------------------------------------------------------------- sweeps and launcher configs


@pytest.mark.parametrize(("name", "swept"), [("paper_unet", "experiment"), ("dataset_size", "data.num_train")])
def test_wandb_sweeps_run_the_same_configs_as_the_hydra_sweeps(name, swept, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "run1")
    monkeypatch.setenv("LD_RUNS_ROOT", "/shared/runs")
    wandb_sweep = yaml.safe_load((SWEEPS / f"{name}.wandb.yaml").read_text())
    values = wandb_sweep["parameters"][swept]["values"]
    assert [[f"{swept}={value}"] for value in values] == expand(SWEEPS / f"{name}.yaml")
    if name == "dataset_size":
        assert values == [100, 1000, 10000, 100000]
    for value in values:
        # What a W&B agent runs: the command with its macros filled in (W&B's own rules).
        argv = []
        for item in wandb_sweep["command"]:
            if item == "${args_no_hyphens}":
                argv.append(f"{swept}={value}")
            elif not (item.startswith("${") and item.endswith("}")):
                argv.append(item)
        assert argv[:6] == ["-m", "lightning_diff.train", "--config-dir", "sweeps", "--config-name", name]
        agent = _sweep_config(name, *argv[6:], hydra=True)
        hydra_run = _sweep_config(name, f"{swept}={value}")
        assert agent.hydra.run.dir == "/shared/runs/wandb/sweep1/run1"
        job = OmegaConf.to_container(agent)
        del job["hydra"]
        expected = OmegaConf.to_container(hydra_run)
        assert job["logger"].pop("offline") is False and expected["logger"].pop("offline") is True
        assert job == expected


def _sweep_config(name: str, *overrides: str, hydra: bool = False):
    # As `--config-dir sweeps`: the sweep's directory first, then conf/ (which holds `train`).
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        config = compose(
            config_name=name,
            overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", "paths.run_dir=unused", *overrides],
            return_hydra_config=hydra,
        )
    OmegaConf.resolve(config)
    return config


def test_sweep_file_mistakes_are_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        expand(tmp_path / "missing.yaml")
    (tmp_path / "plain.yaml").write_text("seed: 1\n")
    with pytest.raises(UserError, match="no hydra.sweeper.params"):
        expand(tmp_path / "plain.yaml")
    (tmp_path / "broken.yaml").write_text("hydra: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        expand(tmp_path / "broken.yaml")
    with pytest.raises(UserError, match="has 27 runs, numbered 0..26"):
        run_overrides(SWEEPS / "paper_unet.yaml", 27)
    assert len(expand(SWEEPS / "dataset_size.yaml", ["data.split=half_a,half_b"])) == 8


def test_launcher_configs_are_submitit_with_site_values(monkeypatch):
    monkeypatch.setenv("LD_PARTITION", "gpu_a100")
    launchers = {}
    for name in ("slurm", "slurm_multigpu", "local"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            config = compose(config_name="train", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
        launchers[name] = config.hydra.launcher
    assert launchers["slurm"]._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launchers["local"]._target_.endswith("submitit_launcher.LocalLauncher")
    assert launchers["slurm"].partition == "gpu_a100" and launchers["slurm"].account is None
    assert launchers["slurm"].max_num_timeout > 0 and launchers["slurm"].gpus_per_node == 1
    multi = launchers["slurm_multigpu"]
    assert multi.tasks_per_node == multi.gpus_per_node == 4 and multi.partition == "gpu_a100"


# ---------------------------------------------------------------- jobs on the local cluster


@pytest.mark.slow
def test_train_sbatch_runs_two_ddp_tasks_to_completion(cluster, tmp_path):
    env = job_env(tmp_path)
    overrides = [*TINY, "trainer.max_steps=30", "trainer.val_check_interval=15"]
    job = cluster.sbatch(
        "--job-name=ld_train", "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out",
        str(SLURM_DIR / "train.sbatch"), *overrides, cwd=tmp_path, env=env,
    )
    log = tmp_path / f"slurm-{job}.out"
    state = cluster.wait(job, timeout=240)[job]
    assert state["JobState"] == "COMPLETED", log_of(log)

    (run_dir,) = (tmp_path / "runs" / "slurm").iterdir()
    assert run_dir.name == f"ld_train-{job}"
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 30
    (wandb_run,) = offline_runs(run_dir)
    assert run_record(wandb_run).run_id == (run_dir / "wandb_run_id").read_text().strip()

    # The dry run, given this job's SLURM variables, prints exactly the command the job ran.
    ran = re.search(r"^lightning_diff: running (.*)$", log.read_text(), re.MULTILINE).group(1)
    rendered = dry_run(
        "train.sbatch", *overrides,
        env=env | {"SLURM_JOB_ID": job, "SLURM_JOB_NAME": "ld_train", "SLURM_NTASKS_PER_NODE": "2",
                   "SLURM_JOB_NUM_NODES": "1", "SLURM_SUBMIT_DIR": str(tmp_path)},
    )
    assert shlex.split(ran) == rendered


@pytest.mark.slow
def test_a_requeued_job_resumes_its_checkpoint_run_directory_and_wandb_run(cluster, tmp_path):
    """Requeued twice: by hand (`scontrol requeue`), then by the job itself on the SIGUSR1 that
    SLURM sends 90 s before the time limit (--signal=SIGUSR1@90), sent here with scancel."""
    max_steps = 600
    job = cluster.sbatch(
        "--job-name=ld_requeue", "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out",
        str(SLURM_DIR / "train.sbatch"), *TINY, f"trainer.max_steps={max_steps}", "trainer.val_check_interval=5000",
        "trainer.log_every_n_steps=50", "callbacks.checkpoint_every_n_steps=50", cwd=tmp_path, env=job_env(tmp_path),
    )
    log = tmp_path / f"slurm-{job}.out"
    run_dir = tmp_path / "runs" / "slurm" / f"ld_requeue-{job}"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"

    def wait_for_a_checkpoint_after(moment: float) -> None:
        deadline = time.monotonic() + 240
        while not (checkpoint.is_file() and checkpoint.stat().st_mtime > moment):
            # A released requeued job passes through REQUEUED and CONFIGURING before RUNNING.
            running = cluster.jobs(job)[job]["JobState"] in ("REQUEUED", "PENDING", "CONFIGURING", "RUNNING")
            assert time.monotonic() < deadline and running, log_of(log)
            time.sleep(0.1)

    def wait_until_requeued() -> None:
        cluster.wait(job, timeout=60, until={"PENDING"})
        assert not (run_dir / "run.json").exists(), "the attempt finished before it was requeued"

    def release() -> None:
        # SLURM holds a requeued job back for about two minutes; let it start now.
        cluster.command("scontrol", "update", f"jobid={job}", "starttime=now")

    wait_for_a_checkpoint_after(0)
    wandb_id = (run_dir / "wandb_run_id").read_text().strip()
    cluster.command("scontrol", "requeue", job)
    wait_until_requeued()
    resumed_step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert 50 <= resumed_step < max_steps
    released = time.time()
    release()

    wait_for_a_checkpoint_after(released)  # the second attempt trains past where it resumed
    cluster.command("scancel", "--signal=USR1", job)
    wait_until_requeued()
    signal_step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert resumed_step < signal_step < max_steps
    release()
    state = cluster.wait(job, timeout=240)[job]
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "2", log_of(log)

    _, first, second, third = log.read_text().split("lightning_diff: running ")
    assert "DUE TO JOB REQUEUE" in first
    assert f"SLURM job {job} requeued" in second and "DUE TO JOB REQUEUE" in second
    restored = r"Restoring states from the checkpoint path at (\S+)"
    assert re.findall(restored, second) == re.findall(restored, third) == [str(checkpoint)]
    assert not list(run_dir.glob("hpc_ckpt_*"))  # Lightning's own requeue (mid-step saves) stays off
    assert [path.name for path in (tmp_path / "runs" / "slurm").iterdir()] == [run_dir.name]
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["global_step"] == max_steps and summary["world_size"] == 2
    assert torch.load(checkpoint, weights_only=True)["global_step"] == max_steps
    assert (run_dir / "wandb_run_id").read_text().strip() == wandb_id
    # One W&B directory per attempt, all of the same run (W&B names them by run id). A killed
    # attempt's last records may not have reached its file; the finished one's did.
    attempts = offline_runs(run_dir)
    assert len(attempts) == 3 and all(path.name.endswith(f"-{wandb_id}") for path in attempts)
    assert run_record(attempts[-1]).run_id == wandb_id


@pytest.mark.slow
def test_sweep_array_runs_each_variant_as_a_task_in_one_wandb_group(cluster, tmp_path):
    sweep = tmp_path / "tiny_sweep.yaml"
    sweep.write_text(
        "defaults:\n  - train\n  - _self_\n  - override /data: toy2d\n  - override /denoiser: bottleneck\n"
        "trainer:\n  max_steps: 20\n  val_check_interval: 10\n"
        "hydra:\n  sweeper:\n    params:\n      denoiser.width: 8,16,32\n"
    )
    job = cluster.sbatch(
        "--array=0-2", "--ntasks-per-node=1", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%A_%a.out",
        str(SLURM_DIR / "sweep_array.sbatch"), str(sweep), *TINY, cwd=tmp_path, env=job_env(tmp_path),
    )
    tasks = cluster.wait(job, timeout=300, tasks=3)
    logs = "\n".join(log_of(path) for path in tmp_path.glob("slurm-*.out"))
    assert sorted(task["ArrayTaskId"] for task in tasks.values()) == ["0", "1", "2"]
    assert {task["JobState"] for task in tasks.values()} == {"COMPLETED"}, logs

    group = f"tiny_sweep-{job}"
    (group_dir,) = (tmp_path / "runs" / "slurm").iterdir()
    assert group_dir.name == group
    assert sorted(path.name for path in group_dir.iterdir()) == ["0", "1", "2"]
    for index, width in enumerate((8, 16, 32)):
        summary = json.loads((group_dir / str(index) / "run.json").read_text())
        assert summary["config"]["denoiser"]["width"] == width and summary["global_step"] == 20
        assert summary["config"]["logger"]["group"] == group
        (wandb_run,) = offline_runs(group_dir / str(index))
        assert run_record(wandb_run).run_group == group


@pytest.mark.slow
def test_hydra_submitit_launcher_runs_each_variant_as_a_slurm_job(cluster, tmp_path):
    sweep_dir = tmp_path / "multirun"
    result = subprocess.run(
        [
            sys.executable, "-m", "lightning_diff.train", "-m", "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={sweep_dir}", *TINY, "logger=none", "trainer.max_steps=20",
            "trainer.val_check_interval=10", "denoiser.width=8,16",
        ],
        cwd=tmp_path, env={**cluster.env, **job_env(tmp_path)}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for index, width in enumerate((8, 16)):
        summary = json.loads((sweep_dir / str(index) / "run.json").read_text())
        assert summary["config"]["denoiser"]["width"] == width and summary["global_step"] == 20
    # submitit keeps a folder per array task, named <array job id>_<task id>: one array, a task per run.
    folders = (sweep_dir / ".submitit").iterdir()
    tasks = [path.name.split("_") for path in folders if re.fullmatch(r"\d+_\d+", path.name)]
    (array_id,) = {array for array, _ in tasks}
    # submitit returns once results are written; SLURM may still be finishing the tasks.
    jobs = cluster.wait(array_id, timeout=120, tasks=2).values()
    assert sorted(job["ArrayTaskId"] for job in jobs) == sorted(task for _, task in tasks) == ["0", "1"]
    assert {job["JobState"] for job in jobs} == {"COMPLETED"}


# ---------------------------------------------------------------- two nodes (partition twonode)

# Linear SGD (deterministic), on the CPU, without the measuring callback (test_ddp.py covers it).
TWO_NODE_RUN = [*LINEAR_SGD, "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "++callbacks.measure.enabled=false"]


def two_node_job(cluster: LocalSlurm, tmp_path: Path, name: str, *overrides: str) -> tuple[str, Path, Path]:
    """Submit slurm/train.sbatch on two nodes, one task each; returns (job id, log, run directory)."""
    job = cluster.sbatch(
        f"--job-name={name}", "--partition=twonode", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
        f"--output={tmp_path}/slurm-%j.out", str(SLURM_DIR / "train.sbatch"), *overrides, cwd=tmp_path,
        env=job_env(tmp_path),
    )
    return job, tmp_path / f"slurm-{job}.out", tmp_path / "runs" / "slurm" / f"{name}-{job}"


@pytest.mark.slow
def test_multinode_train_sbatch_spans_two_nodes_and_matches_one_process(cluster, tmp_path):
    job, log, run_dir = two_node_job(cluster, tmp_path, "ld_two_nodes", *TWO_NODE_RUN)
    state = cluster.wait(job, timeout=300)[job]
    assert state["JobState"] == "COMPLETED", log_of(log)
    assert state["NumNodes"] == "2" and state["NodeList"] == "ld-node[1-2]"

    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["world_size"] == 2 and summary["nodes"] == ["ld-node1", "ld-node2"]
    assert summary["config"]["trainer"]["num_nodes"] == 2 and summary["config"]["trainer"]["devices"] == 1
    assert summary["global_step"] == 50

    # The same global batch in one process (data.batch_size is global; each node took half).
    single = train(train_config(tmp_path / "single", *TWO_NODE_RUN))
    assert single["world_size"] == 1
    two = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    one = torch.load(tmp_path / "single" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for weights in ("state_dict", "current_model_state"):  # EMA and raw
        assert one[weights].keys() == two[weights].keys()
        for key in one[weights]:
            torch.testing.assert_close(two[weights][key], one[weights][key], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_requeued_multinode_job_resumes_in_the_same_run_directory(cluster, tmp_path):
    max_steps = 400
    job, log, run_dir = two_node_job(
        cluster, tmp_path, "ld_two_requeue", *TWO_NODE_RUN, f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=5000", "callbacks.checkpoint_every_n_steps=25",
    )
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not checkpoint.is_file():
        assert time.monotonic() < deadline and cluster.jobs(job)[job]["JobState"] in ("PENDING", "CONFIGURING", "RUNNING"), log_of(log)
        time.sleep(0.1)
    cluster.command("scontrol", "requeue", job)
    cluster.wait(job, timeout=60, until={"PENDING"})
    resumed_step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert not (run_dir / "run.json").exists() and 25 <= resumed_step < max_steps
    cluster.command("scontrol", "update", f"jobid={job}", "starttime=now")
    state = cluster.wait(job, timeout=300)[job]
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", log_of(log)

    _, first, second = log_of(log).split("lightning_diff: running ")
    assert "DUE TO JOB REQUEUE" in first
    assert re.findall(r"Restoring states from the checkpoint path at (\S+)", second) == [str(checkpoint)]
    assert [path.name for path in (tmp_path / "runs" / "slurm").iterdir()] == [run_dir.name]
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["global_step"] == max_steps and summary["nodes"] == ["ld-node1", "ld-node2"]
