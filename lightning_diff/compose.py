"""Build the run's objects from plain config dicts, with one clear error per mistake.

Shared by the entry points (train, sample, evaluate, prefetch), so a checkpoint's stored config
rebuilds exactly the denoiser that was trained.
"""

import inspect
import typing
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_diff.errors import UserError
from lightning_diff.run.checks import check_type


def plain(node: Any) -> Any:
    """A resolved, plain-Python copy of an OmegaConf node (or the value itself)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def annotations_of(obj: Any) -> dict[str, Any]:
    """The parameter annotations of a function, or of a class's ``__init__`` and those of its bases
    (a subclass passes ``**kwargs`` on to them), resolved; none where they cannot be."""
    functions = [c.__dict__["__init__"] for c in reversed(obj.__mro__) if "__init__" in c.__dict__] if inspect.isclass(obj) else [obj]
    hints: dict[str, Any] = {}
    for function in functions:
        try:
            hints.update(typing.get_type_hints(function))
        except Exception:  # an annotation naming what cannot be imported here: the builder checks its own values
            continue
    return hints


def build(node: Any, group: str, **runtime: Any) -> Any:
    """Instantiate ``node`` (with ``_target_``) plus ``runtime`` keyword arguments.

    Keys the target does not accept are reported by name, with the valid ones listed, and a value
    that does not fit the target's annotation (text where a number is expected) by key and type.
    """
    spec = dict(plain(node))
    target = spec.get("_target_")
    if target is None:
        raise UserError(f"config group '{group}' has no _target_; pick one of the options in conf/{group}/")
    try:
        obj = get_object(target)
    except Exception as err:
        raise UserError(f"{group}._target_={target!r} cannot be imported ({err})") from err
    signature = inspect.signature(obj)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not accepts_any:
        valid = [name for name in signature.parameters if name not in runtime]
        unknown = [key for key in spec if not key.startswith("_") and key not in signature.parameters]
        if unknown:
            raise UserError(
                f"{', '.join(f'{group}.{key}' for key in unknown)}: not a setting of {target}; "
                f"valid settings: {', '.join(valid)}"
            )
    hints = annotations_of(obj)
    for key, value in spec.items():
        if key in hints and not key.startswith("_"):
            check_type(f"{group}.{key}", value, hints[key])
    try:
        return instantiate(spec, **runtime, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"could not build {group} ({target}): {cause or err}") from err
