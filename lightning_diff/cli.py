"""What every entry point shares: where the configs live and how user errors end a run."""

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lightning_diff.errors import UserError

T = TypeVar("T")

CONF_DIR = os.environ.get("LIGHTNING_DIFF_CONF", str(Path(__file__).resolve().parents[1] / "conf"))


def exit_on_user_error(action: Callable[[], T]) -> T:
    """Run ``action``; a :class:`UserError` prints its one message and exits with status 2."""
    try:
        return action()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
