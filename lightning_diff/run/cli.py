"""What every entry point shares: where the configs live and how user errors end a run."""

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig

from lightning_diff.errors import UserError
from lightning_diff.run.quiet import quiet_third_party

T = TypeVar("T")

CONF_DIR = os.environ.get("LIGHTNING_DIFF_CONF", str(Path(__file__).resolve().parents[2] / "conf"))


def exit_on_user_error(action: Callable[[], T]) -> T:
    """Run ``action``; a :class:`UserError` prints its one message and exits with status 2."""
    quiet_third_party()
    try:
        return action()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_command_line(config_name: str, argv: list[str] | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides before Hydra does, so a config-group
    option or key that does not exist, or an override that does not parse, exits 2 with one line
    (Hydra's own report is many lines and exits 1). With Hydra flags (``-m``, ``--config-dir``,
    ``--help``, ...) the command line is left to Hydra."""
    overrides = sys.argv[1:] if argv is None else argv
    if any(item.startswith("-") for item in overrides):
        return
    exit_on_user_error(lambda: compose_or_explain(config_name, overrides))


def compose_or_explain(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config, or a :class:`UserError` naming the override at fault and what is valid."""
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name, overrides=overrides)
    except MissingConfigException as err:
        missing = str(err.missing_cfg_file or "")
        # The override that named it: experiment=paper/unet/x is missing experiment/paper/unet/x.
        named = [item.lstrip("+~").split("=", 1) for item in overrides if "=" in item]
        group, choice = next(((k, v) for k, v in named if missing == f"{k}/{v}"), missing.rpartition("/")[::2])
        options = group_options(group) or list(err.options or [])
        raise UserError(
            f"{group}={choice}: no such option in conf/{group}/; choose one of {', '.join(options)}"
        ) from None
    except OverrideParseException as err:
        raise UserError(f"{unparsable(overrides)}: not a valid override ({str(err).splitlines()[0]}); write key=value") from None
    except ConfigCompositionException as err:
        key = str(err).split("'")[1] if "'" in str(err) else "?"
        override = next((item for item in overrides if item.split("=")[0].lstrip("+~") == key), key)
        others = [item for item in overrides if item != override]
        raise UserError(f"{override}: {unknown_key_hint(config_name, key, others)}") from None


def unparsable(overrides: list[str]) -> str:
    """The first override Hydra's grammar rejects."""
    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_override(item)
        except HydraException:  # the parser raises its base class, not OverrideParseException
            return item
    return " ".join(overrides)


def group_options(group: str) -> list[str]:
    """Every option of a config group, nested ones as ``a/b``."""
    folder = Path(CONF_DIR) / group
    return sorted(str(path.relative_to(folder).with_suffix("")) for path in folder.rglob("*.yaml"))


def unknown_key_hint(config_name: str, key: str, other_overrides: list[str]) -> str:
    """What to say of a key that the config (with the other overrides: ``denoiser=unet`` decides
    which keys ``denoiser`` has) lacks: its near namesakes, or the valid keys there."""
    parent, _, name = key.rpartition(".")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            config = compose(config_name, overrides=other_overrides)
        except HydraException:  # another override is wrong too; this one is judged on the defaults
            config = compose(config_name)
    node = config
    for part in parent.split(".") if parent else []:
        node = node.get(part) if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig):
        return f"no such key in the {config_name} config ({parent or key} is not a settings group)"
    keys = sorted(str(k) for k in node.keys())
    close = difflib.get_close_matches(name, keys, n=3)
    where = f"{parent}." if parent else ""
    if close:
        return f"no such key; did you mean {' or '.join(where + c for c in close)}? (a new key is added as +{key}=...)"
    return f"no such key; the keys{' of ' + parent if parent else ''} are {', '.join(keys)} (a new key is added as +{key}=...)"
