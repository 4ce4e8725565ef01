"""Denoiser families by name.

A family is one module in this package whose ``build`` is decorated with ``@family("name")``,
plus one file ``conf/denoiser/<name>.yaml`` whose ``_target_`` is that ``build``. Every
``build`` has the same signature::

    build(data_shape, grid, *, fit, conditioning, **knobs) -> Denoiser

and refuses a ``fit``, ``conditioning`` or knob value it does not support with one
:class:`~lightning_diff.errors.UserError`. The modules of this package are imported on the
first look-up, so a new module needs no other registration.
"""

import importlib
import pkgutil
from collections.abc import Callable

from lightning_diff.errors import UserError

Builder = Callable[..., object]
_FAMILIES: dict[str, Builder] = {}


def family(name: str) -> Callable[[Builder], Builder]:
    """Register ``build`` as the builder of family ``name``."""

    def register(build: Builder) -> Builder:
        if name in _FAMILIES and _FAMILIES[name] is not build:
            raise RuntimeError(f"two denoiser families are named {name!r}")
        _FAMILIES[name] = build
        return build

    return register


def families() -> dict[str, Builder]:
    """Every registered family, by name."""
    package = importlib.import_module("lightning_diff.denoisers")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"lightning_diff.denoisers.{module.name}")
    return dict(sorted(_FAMILIES.items()))


def builder(name: str) -> Builder:
    """The ``build`` of family ``name``, or one :class:`UserError` listing the families."""
    known = families()
    if name not in known:
        raise UserError(f"denoiser={name!r} is not a denoiser family; choose one of {', '.join(known)}")
    return known[name]
