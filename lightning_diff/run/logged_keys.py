"""Which keys a study's W&B runs logged, and as what: read from the run files below a sweep
directory (no network) or from a W&B group through ``wandb.Api`` (network and ``wandb login``).

A key's kind is W&B's own name for the logged value: ``number``, or the ``_type`` W&B stores
with a logged object (``image-file``, ``table-file``, ``histogram``, ...). Keys W&B adds itself
(``_step``, ``_runtime``, ...) are left out.
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from lightning_diff.errors import UserError
from lightning_diff.run.wandb_log import wandb_api
from lightning_diff.run.wandb_records import records

NUMBER = "number"
OTHER = "other"


@dataclass
class LoggedRun:
    """One W&B run: its id (kept by ``wandb sync``), group, job type and logged keys (key -> kind)."""

    id: str
    group: str
    job_type: str
    keys: dict[str, str] = field(default_factory=dict)


def kind_of(value: Any) -> str:
    """``number``, the ``_type`` of a logged W&B object, or ``other``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return NUMBER
    if isinstance(value, Mapping) and isinstance(value.get("_type"), str):
        return str(value["_type"])
    return OTHER


def _file_keys(items: Iterable[Any], keys: dict[str, str]) -> None:
    """Add the keys of a history row or summary update; an object arrives as nested keys (key, _type)."""
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        if not path or path[0].startswith("_"):
            continue
        if len(path) == 1:
            if keys.get(path[0], OTHER) == OTHER:  # a None logged first does not decide the key's kind
                keys[path[0]] = kind_of(json.loads(item.value_json))
        elif path[1] == "_type":
            keys[path[0]] = kind_of({"_type": json.loads(item.value_json)})


def read_run_file(path: Path) -> LoggedRun:
    """The run in one ``run-<id>.wandb`` file and every key it logged (history and summary)."""
    run, keys = None, {}
    try:
        for record in records(path):
            which = record.WhichOneof("record_type")
            if which == "run":
                run = record.run
            elif which == "history":
                _file_keys(record.history.item, keys)
            elif which == "summary":
                _file_keys(record.summary.update, keys)
    except (DecodeError, ValueError) as err:  # a damaged file, or not a W&B run file
        raise UserError(f"{path} is not a readable W&B run file ({err}); remove it or its run directory") from err
    if run is None:
        raise UserError(f"{path} holds no W&B run record; remove it or its run directory")
    return LoggedRun(run.run_id, run.run_group, run.job_type, keys)


def sweep_runs(sweep: Path) -> list[LoggedRun]:
    """Every W&B run below ``sweep`` (a resumed run's several files are one run)."""
    expected = (
        "a sweep directory holds run directories, each with the wandb/offline-run-* folder that "
        "python -m lightning_diff.train writes with logger=wandb (compare and calibrate write theirs with wandb=true)"
    )
    if not sweep.is_dir():
        raise UserError(f"sweep={sweep}: no such directory; {expected}")
    files = sorted({path.resolve() for path in sweep.rglob("run-*.wandb")})  # wandb/latest-run links to one of them
    if not files:
        raise UserError(f"sweep={sweep} holds no W&B run file (run-*.wandb); {expected}")
    runs: dict[str, LoggedRun] = {}
    for path in files:
        run = read_run_file(path)
        kept = runs.setdefault(run.id, run)
        for key, kind in run.keys.items():
            kept.keys.setdefault(key, kind)
    return list(runs.values())


def in_group(runs: list[LoggedRun], group: str | None, job_types: list[str], where: str) -> list[LoggedRun]:
    """The runs of ``group`` and the runs without a group of ``job_types`` (compare and calibrate
    record none); all runs when ``group`` is None."""
    if group is None:
        return runs
    if not any(run.group == group for run in runs):
        groups = sorted({run.group for run in runs if run.group})
        found = f"its groups: {', '.join(groups)}" if groups else "none of its runs has a group (logger.group)"
        raise UserError(f"{where} holds no run of group {group!r} ({found}); group= is the runs' logger.group")
    return [run for run in runs if run.group == group or (not run.group and run.job_type in job_types)]


def _summary_keys(summary: Mapping[str, Any]) -> dict[str, str]:
    return {key: kind_of(value) for key, value in summary.items() if not key.startswith("_")}


def wandb_group_runs(project: str, group: str, job_types: list[str], api: Any = None) -> list[LoggedRun]:
    """The runs of the W&B ``group`` in ``project`` (``entity/project`` or ``project``) and those of
    ``job_types`` without a group, with their summary keys (every key a run logged has a summary value)."""
    if api is None:
        api = wandb_api(group, "build the dashboard from the runs' files with sweep=<the sweep directory>")
    shown = [{"group": group}, {"jobType": {"$in": job_types}}] if job_types else [{"group": group}]
    try:
        found = list(api.runs(project, filters={"$or": shown}))
    except Exception as err:
        raise UserError(f"cannot list the runs of W&B project {project!r} ({err}); check project=") from err
    runs = [LoggedRun(str(run.id), run.group or "", run.job_type or "", _summary_keys(dict(run.summary.items()))) for run in found]
    return in_group(runs, group, job_types, f"W&B project {project!r}")


def all_keys(runs: list[LoggedRun]) -> dict[str, str]:
    """Every key any of ``runs`` logged, with its kind (the first run's where they differ)."""
    keys: dict[str, str] = {}
    for run in runs:
        for key, kind in run.keys.items():
            keys.setdefault(key, kind)
    return keys


def groups_and_ids(runs: list[LoggedRun]) -> tuple[list[str], list[str]]:
    """What picks ``runs`` out of their W&B project: their groups, and the ids of those without one."""
    return sorted({run.group for run in runs if run.group}), sorted(run.id for run in runs if not run.group)
