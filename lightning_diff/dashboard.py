"""``python -m lightning_diff.dashboard group=GROUP | sweep=DIR [save=true]``: a W&B workspace for
a study, built from the keys its runs logged (:mod:`lightning_diff.figures.workspace`).

With ``group=`` alone the keys come from W&B (network and ``wandb login``); with ``sweep=`` from
the runs' own files (no network). Without ``save=true`` the workspace's specification is written
as JSON (``out``); with it, the workspace is saved to W&B and its URL printed.
"""

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_diff.errors import UserError
from lightning_diff.figures.workspace import build_workspace, save, specification
from lightning_diff.run.atomic import atomic_write_text
from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.run.logged_keys import (
    LoggedRun,
    all_keys,
    groups_and_ids,
    in_group,
    sweep_runs,
    wandb_group_runs,
)


def project_path(value: str) -> tuple[str, str]:
    """``ENTITY/PROJECT`` or ``PROJECT`` as (entity, project); an empty entity is the account's own."""
    parts = value.split("/")
    if len(parts) > 2 or not all(parts):
        raise UserError(f"project={value}: give PROJECT or ENTITY/PROJECT")
    return ("", parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def check_switches(cfg: DictConfig) -> None:
    """``save`` a boolean (``save=ture`` must not save) and ``job_types`` a list."""
    if not isinstance(cfg.save, bool):
        raise UserError(f"save={cfg.save}: give true (save the workspace to W&B) or false (write its specification)")
    if not OmegaConf.is_list(cfg.job_types):
        raise UserError(f"job_types={cfg.job_types}: give a list of W&B job types, e.g. job_types=[compare,calibrate] or []")


def study_runs(cfg: DictConfig) -> tuple[list[LoggedRun], str, dict[str, list[str]]]:
    """The runs the workspace shows, the name it goes by (the group, else the sweep directory's) and
    what picks them out of the W&B project: from a sweep, its groups and the ids of its runs without
    one; from W&B, the group and the job types (so compare / calibrate runs added later show too)."""
    group = None if cfg.group is None else str(cfg.group)
    job_types = [str(job_type) for job_type in cfg.job_types]
    if cfg.sweep is not None:
        sweep = Path(str(cfg.sweep)).expanduser()
        runs = in_group(sweep_runs(sweep), group, job_types, f"sweep={sweep}")
        groups, run_ids = groups_and_ids(runs)
        label = group or (groups[0] if len(groups) == 1 else sweep.resolve().name)
        return runs, label, {"groups": groups, "run_ids": run_ids, "job_types": []}
    if group is None:
        raise UserError(
            "give group=<the runs' logger.group> (keys read through the W&B API) or sweep=<sweep directory> "
            "(keys read from the runs' files, no network)"
        )
    runs = wandb_group_runs(str(cfg.project), group, job_types)
    return runs, group, {"groups": [group], "run_ids": [], "job_types": job_types}


def dashboard(cfg: DictConfig) -> dict[str, Any]:
    """Build the workspace; write its specification (``out``) or save it (``save``)."""
    check_switches(cfg)
    entity, project = project_path(str(cfg.project))
    runs, label, shown = study_runs(cfg)
    name = str(cfg.name or f"lightning_diff {label}")
    workspace = build_workspace(all_keys(runs), entity=entity, project=project, name=name, **shown)
    if cfg.save:
        url = save(workspace)
        print(f"workspace saved: {url}")
        return {"url": url}
    out = Path(str(cfg.out or f"dashboard-{label}.json")).expanduser()
    spec = specification(workspace)
    atomic_write_text(out, json.dumps(spec, indent=2) + "\n")
    panels = sum(len(section.panels) for section in workspace.sections)
    print(f"workspace specification: {out} ({len(workspace.sections)} sections, {panels} panels, {len(runs)} runs); "
          "add save=true to save it to W&B")
    sys.stdout.flush()
    return {"out": out, "spec": spec}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="dashboard")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: dashboard(cfg))


if __name__ == "__main__":
    check_command_line("dashboard")
    main()
