"""``trainer.strategy=ddp_spawn``: one run as several local DDP ranks, each a whole run.

Lightning's own ``ddp_spawn`` trains in spawned processes and then returns to the parent,
which gets the raw weights back but not the optimizer state, the EMA weights or the step
count; the final validation, checkpoint and samples written there would be wrong. Here each
spawned process instead runs the *whole* run (fit, final validation, checkpoint, samples,
``run.json``) as one rank of Lightning's ``ddp`` strategy, which is what every rank does under
``srun`` on a cluster, so both paths share one code path.
"""

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_diff.errors import UserError

SPAWN_STRATEGY = "ddp_spawn"

Run = Callable[[DictConfig], dict[str, Any]]


def spawns_ranks(cfg: DictConfig) -> bool:
    """Whether ``cfg`` asks for local ranks spawned by :func:`run_ranks`."""
    return str(cfg.trainer.get("strategy")) == SPAWN_STRATEGY


def local_world_size(trainer_cfg: Any) -> int:
    """The number of local processes a ``ddp_spawn`` trainer config asks for."""
    devices = trainer_cfg.get("devices")
    if int(trainer_cfg.get("num_nodes", 1)) != 1:
        raise UserError(
            f"trainer.strategy={SPAWN_STRATEGY} runs on one machine, but trainer.num_nodes="
            f"{trainer_cfg.get('num_nodes')}; across nodes use trainer.strategy=ddp under srun (slurm/train.sbatch)"
        )
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    if isinstance(devices, (list, tuple)) and devices:
        return len(devices)
    raise UserError(
        f"trainer.devices={devices!r}: with trainer.strategy={SPAWN_STRATEGY} give the number of local "
        "processes as an integer >= 1 (e.g. trainer.devices=2) or a list of device indices"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(index: int, run: Run, config: dict[str, Any], world_size: int, port: int, results: Any) -> None:
    # LOCAL_RANK makes Lightning treat the processes as created externally (no second launch).
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(index),
        NODE_RANK="0",
        WORLD_SIZE=str(world_size),
    )
    # Lightning fixes this in its setup; before that, only rank 0 may print or create the W&B run.
    rank_zero_only.rank = index
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        summary = run(OmegaConf.create(config))
    except UserError as err:
        results.put(("error", str(err)))
        return
    if index == 0:
        results.put(("summary", summary))


def run_ranks(run: Run, cfg: DictConfig) -> dict[str, Any]:
    """Run ``run(cfg)`` on ``trainer.devices`` spawned ranks with ``trainer.strategy=ddp``.

    Returns rank 0's result; a :class:`UserError` in any rank is raised here with its message.
    """
    world_size = local_world_size(cfg.trainer)
    # Resolved here: ranks cannot resolve Hydra's ${hydra:...} (the run directory) themselves.
    config = OmegaConf.to_container(cfg, resolve=True)
    config["trainer"]["strategy"] = "ddp"
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    processes = mp.start_processes(
        _rank_main,
        args=(run, config, world_size, _free_port(), results),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    outcomes: list[tuple[str, Any]] = []
    # Drain while waiting: a rank blocks on a full pipe until its result is read.
    while True:
        while not results.empty():
            outcomes.append(results.get())
        if processes.join(timeout=0.2):
            break
    while not results.empty():
        outcomes.append(results.get())
    for kind, payload in outcomes:
        if kind == "error":
            raise UserError(payload)
    for kind, payload in outcomes:
        if kind == "summary":
            return payload
    raise RuntimeError(f"the {world_size} DDP ranks exited without a result")


def node_name() -> str:
    """This process's node: SLURM's name for it under SLURM (several nodes may share a host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def node_names() -> list[str]:
    """The node of every rank, in rank order (a collective: every rank must call it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [node_name()]
    names: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(names, node_name())
    return [str(name) for name in names]
