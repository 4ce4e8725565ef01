"""Issue #13: the structure says what it is. The layers of docs/architecture.md and what may
import what; size limits; one registry of families that matches conf/denoiser/; every key an
error message names exists in the composed config."""

import ast
import inspect
import re
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

from conftest import REPO
from lightning_diff.denoisers.registry import families

PACKAGE = REPO / "lightning_diff"
ENTRY_POINTS = {
    "train", "sample", "evaluate", "compare", "calibrate", "report", "prefetch", "demo", "sweep", "dashboard", "adopt",
    "results_table", "quoted_numbers",
}
FOUNDATION = {"errors", "seeding", "progress"}
# Layer of each top-level part, and the layers it may import (besides itself and the foundation).
MAY_IMPORT = {
    "run": set(),
    "diffusion": set(),
    "data": {"run"},
    "denoisers": {"diffusion"},
    "metrics": {"run"},
    "figures": set(),
    "theory": {"diffusion", "denoisers", "metrics", "figures", "data"},
    "compose": {"diffusion", "run"},
    "module": {"run", "diffusion", "denoisers"},
    "callbacks": {"run", "diffusion", "denoisers", "metrics", "figures", "compose", "module"},
    "trained": {"run", "diffusion", "denoisers", "compose"},
    "training": {"run", "diffusion", "denoisers", "metrics", "figures", "theory", "compose", "module", "callbacks"},
}
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name, without the ``lightning_diff.`` prefix."""
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
        for path in PACKAGE.rglob("*.py")
    }


def part_of(name: str) -> str:
    """``run.cli`` -> ``run``; ``train`` -> ``train``; ``denoisers`` (its __init__) -> ``denoisers``."""
    return name.split(".")[0]


def imported(path: Path) -> set[str]:
    """The lightning_diff modules ``path`` imports anywhere (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_diff."):
            names.add(node.module.removeprefix("lightning_diff."))
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("lightning_diff.") for a in node.names if a.name.startswith("lightning_diff.")}
    return names


def test_every_import_follows_the_layer_rule():
    broken = []
    for name, path in modules().items():
        part = part_of(name)
        if part in ENTRY_POINTS or part == "__init__":
            continue
        allowed = {part} | FOUNDATION | (set() if part in FOUNDATION else MAY_IMPORT[part])
        for target in imported(path):
            if part_of(target) not in allowed:
                broken.append(f"{name} imports {target}")
    assert not broken, "imports against docs/architecture.md:\n" + "\n".join(broken)


def test_no_entry_point_imports_another():
    for name, path in modules().items():
        if part_of(name) in ENTRY_POINTS:
            assert not {part_of(t) for t in imported(path)} & (ENTRY_POINTS - {part_of(name)}), name


def test_nothing_below_the_entry_points_imports_them():
    for name, path in modules().items():
        if part_of(name) not in ENTRY_POINTS:
            assert not {part_of(t) for t in imported(path)} & ENTRY_POINTS, name


def test_the_diffusion_layer_never_imports_families_and_families_never_import_callbacks_or_wandb():
    for name, path in modules().items():
        source = path.read_text()
        if part_of(name) == "diffusion":
            assert "denoisers" not in {part_of(t) for t in imported(path)}, name
        if part_of(name) == "denoisers":
            assert not re.search(r"^\s*(import wandb|from wandb)", source, re.MULTILINE), name


def test_no_function_over_60_lines_and_no_module_over_500():
    long = []
    for name, path in modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            long.append(f"module {name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


# ---------------------------------------------------------------- the family registry

DENOISER_CONF = REPO / "conf" / "denoiser"


def test_each_family_is_one_module_plus_one_yaml_file():
    registered = families()
    files = {path.stem: yaml.safe_load(path.read_text()) for path in DENOISER_CONF.glob("*.yaml")}
    assert set(registered) == set(files)
    for name, spec in files.items():
        assert get_object(spec["_target_"]) is registered[name], name


@pytest.mark.parametrize("name", sorted(families()))
def test_every_build_has_the_same_signature_and_the_yaml_defaults(name):
    build = families()[name]
    parameters = inspect.signature(build).parameters
    assert list(parameters)[:4] == ["data_shape", "grid", "fit", "conditioning"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(parameters.values())[2:])
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())  # a misspelt key fails
    spec = yaml.safe_load((DENOISER_CONF / f"{name}.yaml").read_text())
    for key, value in spec.items():
        if key.startswith("_") or (isinstance(value, str) and value.startswith("${")):
            continue
        assert key in parameters, f"{name}.yaml: {key} is not a setting of its build"
        # Library use (no Hydra) gets the defaults the command line gets.
        assert parameters[key].default == value, f"{name}: {key} defaults to {parameters[key].default!r} in code, {value!r} in YAML"


# ---------------------------------------------------------------- keys named in messages

GROUPS = (
    "data", "denoiser", "diffusion", "sampler", "optimizer", "trainer", "callbacks", "lr_schedule", "paths", "logger",
    "metrics",
)
NAMED_KEY = re.compile(r"(?<![\w.])(" + "|".join(GROUPS) + r")((?:\.[a-z_][a-z0-9_]*)+)")


def composed_keys() -> set[str]:
    """Every key path of the train config, over every option of every config group."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lightning_diff.run.cli import CONF_DIR

    keys: set[str] = set()

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keys.add(f"{prefix}{key}")
                walk(value, f"{prefix}{key}.")

    groups = [path.name for path in Path(CONF_DIR).iterdir() if path.is_dir() and path.name in GROUPS + ("experiment",)]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for group in groups:
            folder = Path(CONF_DIR) / group
            for option in sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml")):
                cfg = compose("train", overrides=[f"{group}={option}", "paths.run_dir=x"])
                walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys


def test_every_key_an_error_message_names_exists_in_the_composed_config():
    keys = composed_keys()
    missing = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for group, rest in NAMED_KEY.findall(node.value):
                    key = group + rest
                    if key not in keys and not key.endswith("."):
                        missing.append(f"{name}: {key}")
    assert not missing, missing


def test_the_readme_family_example_trains_with_the_shared_objective(tmp_path, monkeypatch):
    """The ten lines the README gives for a new family: registered, built from its YAML, trained."""
    import sys
    import types

    from omegaconf import OmegaConf, open_dict

    from conftest import train_config
    from lightning_diff.denoisers import registry
    from lightning_diff.training import train

    section = (REPO / "README.md").read_text().split("### Adding a family")[1].split("### ")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    spec = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    module = types.ModuleType("lightning_diff.denoisers.shrink")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    exec(compile(code, "README.md", "exec"), module.__dict__)
    assert registry.builder("shrink") is module.build and spec["_target_"] == "lightning_diff.denoisers.shrink.build"

    cfg = train_config(tmp_path, "data=toy2d", "trainer.max_steps=20", "trainer.val_check_interval=20", "num_samples=4")
    with open_dict(cfg):
        cfg.denoiser = OmegaConf.create(spec)
    summary = train(cfg)
    assert summary["global_step"] == 20 and summary["num_parameters"] == 10  # one scale per level
