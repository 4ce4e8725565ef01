"""A SLURM cluster on localhost, for testing slurm/ (Debian's slurm-wlm + munge).

Partition ``debug`` (the default) is one node, ``ld-node0``, with all the CPUs; partition
``twonode`` is two more nodes, ``ld-node1`` and ``ld-node2`` (one CPU each). Every node is this
host (``NodeHostname=localhost``), each its own ``slurmd -N <name>`` on its own port, so a job
can span two nodes on one machine. (SLURM 22.05 refuses a node *named* localhost beside nodes
whose NodeHostname is localhost: "Duplicated NodeHostName".) The node names do not resolve: jobs that
rendezvous across nodes set ``MASTER_ADDR=127.0.0.1``.

Everything lives in one temporary directory: its own munge key and socket, its own ports,
state, spool and log directories, so it needs no system SLURM or munge and leaves any running
one alone. The daemons run as root (a single-node test cluster, see /work/shared/env-notes.md);
:meth:`LocalSlurm.stop` cancels the cluster's jobs and ends exactly the daemons it started,
found by their pid files.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "squeue", "mungekey")
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"
}

CONFIG = """\
ClusterName=lightning_diff_test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
# SLURM's default: a cancelled or requeued step gets 30 s to close its W&B run. Killed sooner,
# its W&B service outlives it here (proctrack/linuxproc cannot reap it) and holds the run ID.
KillWait=30
SlurmdParameters=config_overrides
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
NodeName=ld-node0 NodeHostname=localhost NodeAddr=127.0.0.1 Port={node0_port} CPUs={cpus} RealMemory=8000 State=UNKNOWN
NodeName=ld-node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port={node1_port} CPUs=1 RealMemory=4000 State=UNKNOWN
NodeName=ld-node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port={node2_port} CPUs=1 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ld-node0 Default=YES MaxTime=INFINITE State=UP
PartitionName=twonode Nodes=ld-node1,ld-node2 MaxTime=INFINITE State=UP
"""
NODES = ("ld-node0", "ld-node1", "ld-node2")


def missing_parts() -> list[str]:
    """What this machine lacks to run the cluster (empty when it can)."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if os.geteuid() != 0:
        missing.append("root (the test cluster's daemons run as root)")
    return missing


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalSlurm:
    """The cluster of this module's docstring (``cpus`` CPUs on ``localhost``), its files under ``root``."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = root
        self.cpus = cpus
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "run" / "munge.socket"
        self.pid_files = {
            "munged": root / "run" / "munged.pid",
            "slurmctld": root / "run" / "slurmctld.pid",
            **{f"slurmd:{node}": root / "run" / f"slurmd-{node}.pid" for node in NODES},
        }

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM commands (and, through sbatch, for the jobs)."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> None:
        for name in ("run", "state", "spool", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        # munged insists that the socket's directories are reachable by everyone but writable only by root.
        for path in (self.root, self.root / "run"):
            path.chmod(0o755)
        key = self.root / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        subprocess.run(
            [
                "munged",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.pid_files['munged']}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
        )
        ctld_port, node0_port, node1_port, node2_port = _free_ports(4)
        self.conf.write_text(
            CONFIG.format(
                root=self.root,
                cpus=self.cpus,
                ctld_port=ctld_port,
                node0_port=node0_port,
                node1_port=node1_port,
                node2_port=node2_port,
                munge_socket=self.munge_socket,
            )
        )
        daemons = [["slurmctld"]] + [["slurmd", "-N", node] for node in NODES]
        for daemon in daemons:
            subprocess.run([*daemon, "-f", str(self.conf)], check=True, capture_output=True, env=self.env)
        for node in NODES:
            self._wait_for_idle_node(node, timeout=30)

    def _wait_for_idle_node(self, node: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.command("scontrol", "show", "node", node, check=False)
            match = re.search(r"State=(\S+)", result.stdout)
            state = match.group(1) if match else result.stderr.strip()
            if state.startswith("IDLE"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the test cluster's node {node} did not become idle (state {state!r}); see {self.root / 'log'}")

    def stop(self) -> None:
        """Cancel the cluster's jobs, then end the daemons this cluster started."""
        if self.conf.is_file() and self.pid_files["slurmctld"].is_file():
            self.command("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                queue = self.command("squeue", "--noheader", check=False)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.2)
        order = [*(f"slurmd:{node}" for node in NODES), "slurmctld", "munged"]
        pids = [pid for pid in map(self._daemon_pid, order) if pid is not None]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)

    def _daemon_pid(self, name: str) -> int | None:
        """The pid in the daemon's pid file (``slurmd:<node>`` for a node's slurmd), if that process
        is still this daemon (not a reused pid)."""
        path = self.pid_files[name]
        try:
            pid = int(path.read_text().split()[0])
            return pid if Path(f"/proc/{pid}/comm").read_text().strip() == name.split(":")[0] else None
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def command(
        self, *args: str, check: bool = True, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        result = subprocess.run(
            list(args), capture_output=True, text=True, env={**self.env, **(env or {})}, cwd=cwd, timeout=60
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        """Submit a job; returns its id (for an array, the array job id)."""
        return self.command("sbatch", "--parsable", *args, cwd=cwd, env=env).stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> dict[str, dict[str, str]]:
        """``scontrol show job`` fields of the job (of every task of an array), by job id."""
        out = self.command("scontrol", "show", "job", "--oneliner", job_id).stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields
        return jobs

    def wait(
        self, job_id: str, timeout: float, until: Iterable[str] = TERMINAL_STATES, tasks: int = 1
    ) -> dict[str, dict[str, str]]:
        """Wait until ``tasks`` jobs under ``job_id`` are all in one of the states ``until``."""
        until = set(until)
        deadline = time.monotonic() + timeout
        jobs: dict[str, dict[str, str]] = {}
        while time.monotonic() < deadline:
            jobs = self.jobs(job_id)
            # A pending array shows as one record until its tasks are split off.
            if len(jobs) >= tasks and all(job.get("JobState") in until for job in jobs.values()):
                return jobs
            time.sleep(0.3)
        states = {jid: job.get("JobState") for jid, job in jobs.items()}
        raise TimeoutError(f"job {job_id} did not reach {sorted(until)} within {timeout:.0f} s: {states}")
