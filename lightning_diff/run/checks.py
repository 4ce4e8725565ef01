"""Type and range checks of run settings that no builder checks on its own.

Hydra takes ``trainer.max_steps=abc`` as the string "abc" and ``num_samples=-5`` as a number
it cannot know is wrong; Lightning and torch then fail late with a traceback, or not at all.
Each check here names the key, the value and what would be valid, before anything is built.
"""

import collections.abc
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_diff.errors import UserError

# key: (smallest valid value, what the key means); each must be an integer.
RUN_INTEGERS = {
    "seed": (0, "the run's seed"),
    "num_samples": (0, "samples written at the end (0: none)"),
    "trainer.max_steps": (-1, "training steps (-1: Lightning's epoch limit)"),
    "trainer.log_every_n_steps": (1, "steps between logged training losses"),
    "closed_form_val_images": (1, "validation images of a closed-form family (null: all)"),
}
# Optimizer settings that torch checks only when the first step is taken, with messages that
# do not name the key: each must be a number >= 0, and the learning rate > 0.
OPTIMIZER_NONNEGATIVE = ("weight_decay", "momentum", "eps")

def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def check_integer(key: str, value: Any, minimum: int, meaning: str) -> None:
    """An integer >= ``minimum``, else one :class:`UserError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{key}={value!r} is not valid: {meaning}, an integer >= {minimum}")


def check_run_settings(cfg: DictConfig) -> None:
    """Check the training run's integer settings and the optimizer's numbers."""
    for key, (minimum, meaning) in RUN_INTEGERS.items():
        value = _value(cfg, key)
        if value is not None:
            check_integer(key, value, minimum, meaning)
    interval = _value(cfg, "trainer.val_check_interval")
    valid_fraction = isinstance(interval, float) and 0.0 < interval <= 1.0
    valid_steps = isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1
    if interval is not None and not (valid_fraction or valid_steps):
        raise UserError(
            f"trainer.val_check_interval={interval!r} is not valid: steps between validations (an integer >= 1) "
            "or a fraction of an epoch in (0, 1]"
        )
    if cfg.get("optimizer") is not None:
        check_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True))


def check_optimizer(settings: Mapping[str, Any]) -> None:
    """The optimizer's learning rate, weight decay, momentum, eps and betas are numbers in range."""
    for key in ("lr", *OPTIMIZER_NONNEGATIVE):
        if key not in settings:
            continue
        value = settings[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value < 0 or (key == "lr" and value == 0):
            rule = "the learning rate must be > 0" if key == "lr" else "must be >= 0"
            raise UserError(f"optimizer.{key}={value!r} is not valid: {rule}")
    betas = settings.get("betas")
    if betas is not None:
        pair = isinstance(betas, (list, tuple)) and len(betas) == 2
        if not pair or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise UserError(f"optimizer.betas={betas!r} is not valid: two numbers in [0, 1), e.g. [0.9,0.999]")


def fits(value: Any, annotation: Any) -> bool | None:
    """Whether a config value fits a type annotation: True, False, or None when the annotation is
    not one a config value can be checked against (a class the builder converts, a callable...)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        found = [fits(value, arg) for arg in args]
        return True if True in found else (None if None in found else False)
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [fits(item, args[0]) for item in value] if len(args) == 1 or (len(args) == 2 and args[1] is ...) else []
        return False not in inner
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        return isinstance(value, dict)
    return None


def describe(annotation: Any) -> str:
    """An annotation in words, for a message about a value that does not fit it."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if typing.get_origin(annotation) in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        return "a list [..]"
    if typing.get_origin(annotation) in (dict, collections.abc.Mapping) or annotation is dict:
        return "a mapping {..}"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_type(key: str, value: Any, annotation: Any) -> None:
    """One :class:`UserError` naming ``key`` when ``value`` does not fit ``annotation``."""
    if fits(value, annotation) is False:
        raise UserError(f"{key}={value!r} is not valid: it must be {describe(annotation)}")
