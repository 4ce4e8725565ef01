"""The W&B workspace of a study, built with ``wandb-workspaces`` from the keys its runs logged.

Each section is a list of rules; a rule gives one panel to every logged key of its kind whose
name fully matches its pattern, so metrics added later (KID, precision / recall / density /
coverage, bounds of the memorized fraction) get panels without a change here, and no panel
names a key the runs did not log. A key gets at most one panel, in the first section that
matches it. Training metrics are drawn over the training step; the numbers compare, calibrate
and evaluate log once per run are bars (one per run); images are media browsers; tables are
table panels.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning_diff.errors import UserError

NUMBER, IMAGE, TABLE = "number", "image-file", "table-file"
# Lightning's WandbLogger logs the training step beside every metric; W&B's own step counts log calls.
TRAINING_STEP = "trainer/global_step"
REALISM = r"(fid|fd_[\w.-]+|kid|precision|recall|density|coverage)([@_].*)?"
MEMORIZED = r"memorized_fraction(_\w+)?"  # with its bounds (_low, _high, ...) where logged


@dataclass(frozen=True)
class Rule:
    """Every key logged as ``kind`` whose name fully matches ``pattern`` gets a ``panel``:
    ``line`` (over training steps), ``bar`` (one value per run), ``media`` or ``table``."""

    pattern: str
    kind: str
    panel: str


@dataclass(frozen=True)
class Panel:
    panel: str
    key: str


SECTIONS: dict[str, tuple[Rule, ...]] = {
    "Validation loss per level": (Rule(r"val/loss(_level_\d+)?", NUMBER, "line"),),
    "Realism": (Rule(f"measure/{REALISM}", NUMBER, "line"), Rule(f"eval/{REALISM}", NUMBER, "bar")),
    "Memorization": (
        Rule(f"measure/{MEMORIZED}", NUMBER, "line"),
        Rule(r"measure/d1_median", NUMBER, "line"),
        Rule(f"eval/{MEMORIZED}", NUMBER, "bar"),
        Rule(r"eval/d1_median", NUMBER, "bar"),
    ),
    "Sample grids": (Rule(r"measure/.+", IMAGE, "media"),),
    "Agreement and explanation r²": (
        Rule(r"(r2|pearson_r)_samples_(median|mean)", NUMBER, "bar"),  # compare (job_type compare)
        Rule(r"eval/agreement_.+", NUMBER, "bar"),  # evaluate compare=...
        Rule(r"calibrate/.+_level_\d+", NUMBER, "bar"),  # best r2 and the chosen knob per level (job_type calibrate)
        Rule(r"(compare|calibrate)/.+", IMAGE, "media"),  # the a | b | |a - b| grid, r2 per level and per knob
    ),
    "Tables": (Rule(r".+", TABLE, "table"),),
}


def _natural(key: str) -> list[Any]:
    """Sort key putting level 2 before level 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def layout(keys: Mapping[str, str]) -> dict[str, list[Panel]]:
    """The sections that have a panel, in :data:`SECTIONS` order, from ``keys`` (key -> kind)."""
    placed: set[str] = set()
    sections: dict[str, list[Panel]] = {}
    for name, rules in SECTIONS.items():
        panels = []
        for rule in rules:
            for key in sorted(keys, key=_natural):
                if key not in placed and keys[key] == rule.kind and re.fullmatch(rule.pattern, key):
                    panels.append(Panel(rule.panel, key))
                    placed.add(key)
        if panels:
            sections[name] = panels
    return sections


def _library() -> tuple[Any, Any]:
    """wandb-workspaces' workspace and panel modules: an optional dependency, needed only here."""
    try:
        import wandb_workspaces.reports.v2 as panels
        from wandb_workspaces import workspaces
    except ImportError as err:
        raise UserError(
            f"the dashboard needs wandb-workspaces ({err}); install it with `pip install -e '.[dashboard]'` "
            "(make setup does)"
        ) from err
    return workspaces, panels


def _panel(panels: Any, panel: Panel, x_axis: str) -> Any:
    if panel.panel == "line":
        return panels.LinePlot(title=panel.key, x=x_axis, y=[panel.key])
    if panel.panel == "bar":
        return panels.BarPlot(title=panel.key, metrics=[panel.key])
    if panel.panel == "media":
        return panels.MediaBrowser(title=panel.key, media_keys=[panel.key])
    return panels.WeavePanelSummaryTable(table_name=panel.key)


def build_workspace(
    keys: Mapping[str, str],
    *,
    entity: str,
    project: str,
    name: str,
    groups: list[str],
    run_ids: list[str],
    job_types: list[str],
) -> Any:
    """The workspace (a ``wandb_workspaces.workspaces.Workspace``) of the runs in ``groups``, the
    runs ``run_ids`` and the runs of ``job_types``, with a panel for each key of :func:`layout`."""
    workspaces, panels = _library()
    found = layout(keys)
    if not found:
        raise UserError(
            "the runs logged none of the keys a dashboard shows (val/loss..., measure/..., compare's r2_..., "
            "calibrate/...); train them with logger=wandb, or run compare / calibrate with wandb=true"
        )
    x_axis = TRAINING_STEP if keys.get(TRAINING_STEP) == NUMBER else "Step"
    sections = [
        workspaces.Section(name=title, panels=[_panel(panels, panel, x_axis) for panel in shown], is_open=True)
        for title, shown in found.items()
    ]
    named = (("Group", groups), ("ID", run_ids), ("JobType", job_types))
    terms = [workspaces.Metric(field).isin(sorted(values)) for field, values in named if values]
    filters = workspaces.Or(*terms) if len(terms) > 1 else terms
    return workspaces.Workspace(
        entity=entity, project=project, name=name, sections=sections,
        runset_settings=workspaces.RunsetSettings(filters=filters),
    )


def specification(workspace: Any) -> dict[str, Any]:
    """The workspace as W&B stores it (what ``save`` uploads), as plain JSON data."""
    # wandb-workspaces has no public dump; _to_model is what its own save() serialises.
    return workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def save(workspace: Any) -> str:
    """Save the workspace to W&B (the logged-in account's entity when it names none); its URL."""
    import wandb

    try:
        if not workspace.entity:
            workspace.entity = wandb.Api().default_entity
        workspace.save()
    except Exception as err:  # wandb raises its own types for a missing login, no network, no access
        raise UserError(
            f"cannot save the workspace to W&B ({err}); saving needs network and a W&B account: run `wandb login` "
            "(or set WANDB_API_KEY), or leave out save=true to write the workspace's specification as JSON"
        ) from err
    return str(workspace.url)
