"""Benchmark results: one row per comparison, printed as a table and written as JSON."""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import median
from lightning_diff.run.atomic import atomic_write_text


@dataclass
class Row:
    """Ours against a peer on one case; ``ratio`` is always ours / peer in ``unit``.

    ``target`` bounds the ratio: ``("<=", 1.03)`` for times (ours at most 3% slower),
    ``(">=", 1.0)`` for throughputs. Without a peer (``peer`` None) the row only reports ours.
    """

    benchmark: str
    case: str
    unit: str
    ours: float
    peer: float | None = None
    peer_name: str = ""
    target: tuple[str, float] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.peer is None or self.peer == 0:
            return None
        return self.ours / self.peer

    @property
    def met(self) -> bool | None:
        """Whether the target holds; None when there is no target or no ratio."""
        if self.target is None or self.ratio is None:
            return None
        op, bound = self.target
        return self.ratio <= bound if op == "<=" else self.ratio >= bound

    @classmethod
    def images_per_second(
        cls, benchmark: str, case: str, images: int, times: dict[str, list[float]], peer_name: str, note: str
    ) -> "Row":
        """A throughput row from the seconds per repeat that ``interleaved`` timed for "ours" and "peer"."""
        return cls(
            benchmark,
            case,
            "images/s",
            images / median(times["ours"]),
            images / median(times["peer"]),
            peer_name,
            None,
            note=note,
            extra={"ours_s": times["ours"], "peer_s": times["peer"]},
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["met"] = self.met
        return data


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.3g}"


def table(rows: list[Row]) -> str:
    """A fixed-width table: benchmark, case, ours, peer, ratio ours/peer, target and whether it holds."""
    header = ["benchmark", "case", "unit", "ours", "peer", "peer is", "ours/peer", "target", "holds"]
    lines = []
    for row in rows:
        target = f"{row.target[0]} {row.target[1]:g}" if row.target else ""
        holds = {True: "yes", False: "NO", None: ""}[row.met]
        ratio = "-" if row.ratio is None else f"{row.ratio:.3f}"
        ours, peer = _number(row.ours), _number(row.peer)
        lines.append([row.benchmark, row.case, row.unit, ours, peer, row.peer_name, ratio, target, holds])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]

    def render(cells: list[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()

    out = [render(header), render(["-" * w for w in widths])] + [render(line) for line in lines]
    notes = [f"  [{row.benchmark}/{row.case}] {row.note}" for row in rows if row.note]
    return "\n".join(out + (["notes:"] + notes if notes else []))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically, so an interrupted run never leaves half a file."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
