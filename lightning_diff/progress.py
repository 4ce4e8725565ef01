"""Progress that suits where the output goes: a live tqdm bar on a terminal; in a log file
(CI, SLURM's output file, a pipe) one plain line every few percent, since a bar's carriage-return
updates would pile up into one unreadable line.

:func:`with_progress` wraps loops (sampling, FID embedding, evaluation);
:class:`lightning_diff.callbacks.progress.ProgressLines` does the same for training.
"""

import sys
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
# A log gets a line each time this much more of the work is done.
LOG_EVERY_PERCENT = 5


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr by default) is a terminal that can redraw a bar."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class LogLines:
    """Prints ``desc: unit done/total (p%), extra, rate/s, ETA`` at every LOG_EVERY_PERCENT once
    ``delay`` seconds have passed (short work prints nothing, as a delayed tqdm bar would).
    ``start`` is where this process began (a resumed run): rate and ETA count from there."""

    def __init__(self, total: int, desc: str, unit: str, delay: float, stream: TextIO, start: int = 0) -> None:
        self.total, self.desc, self.unit, self.delay, self.stream = max(total, 1), desc, unit, delay, stream
        self.start = start
        self.started = time.monotonic()
        self.next_percent = (100 * start // self.total // LOG_EVERY_PERCENT + 1) * LOG_EVERY_PERCENT

    def update(self, done: int, extra: str = "") -> None:
        percent = 100 * done // self.total
        elapsed = time.monotonic() - self.started
        if (percent < self.next_percent and done < self.total) or elapsed < self.delay:
            return
        self.next_percent = (percent // LOG_EVERY_PERCENT + 1) * LOG_EVERY_PERCENT
        progressed = done - self.start
        rate = f"{progressed / elapsed:.3g}/s" if elapsed > 0 else "?/s"
        remaining = str(timedelta(seconds=round(elapsed * (self.total - done) / progressed))) if progressed > 0 else "?"
        print(
            f"{self.desc}: {self.unit} {done}/{self.total} ({percent}%){extra}, {rate}, ETA {remaining}",
            file=self.stream,
            flush=True,
        )


def with_progress(
    iterable: Iterable[T], desc: str, unit: str = "batch", delay: float = 3.0, disable: bool = False,
    total: int | None = None,
) -> Iterable[T]:
    """``iterable`` with progress: a tqdm bar on a terminal, else plain lines (see module doc)."""
    if disable:
        return iterable
    if interactive():
        return tqdm(iterable, desc=desc, unit=unit, delay=delay, leave=False, total=total)
    count = total if total is not None else len(iterable)  # type: ignore[arg-type]
    return _logged(iterable, LogLines(count, desc, unit, delay, sys.stderr))


def _logged(iterable: Iterable[T], lines: LogLines) -> Iterator[T]:
    for done, item in enumerate(iterable, start=1):
        yield item
        lines.update(done)


class Ticks:
    """Progress of work that is counted, not iterated (denoiser calls inside a sampler, levels of a
    validation): a tqdm bar on a terminal, else :class:`LogLines`; nothing when ``disable``."""

    def __init__(self, total: int, desc: str, unit: str = "step", delay: float = 3.0, disable: bool = False) -> None:
        self.done = 0
        self.bar = None
        self.lines = None
        if disable:
            return
        if interactive():
            self.bar = tqdm(total=total, desc=desc, unit=unit, delay=delay, leave=False)
        else:
            self.lines = LogLines(total, desc, unit, delay, sys.stderr)

    def tick(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.lines is not None:
            self.lines.update(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
