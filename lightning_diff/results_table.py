"""The study's one table for its reading, written from the report's CSV, never by hand.

``python -m lightning_diff.report`` writes every column it measures (report.csv, 30 and more);
a reading of the study (docs/results.md) shows the few a conclusion rests on, per row (its data
half and training seed): the verdict; realism (KID ± std, FID, precision, recall, density,
coverage against held-out images); copying (the memorized fraction and its exact 95% upper
bound); the two-model agreement of the halves; the same-noise r2 with the reference across
training seeds and its difference from the seed floor; and for each analytic machine its r2
with the row and the share of the best baseline's error it removes. Every interval is the
report's 95% interval.

    python -m lightning_diff.results_table docs/results/study_rigor/grid/report.csv --split half_a
    python -m lightning_diff.results_table CSV --split half_a --doc docs/results.md

The second form rewrites the table between ``<!-- results table: CSV [split=SPLIT] -->`` and
``<!-- end of results table -->`` in the document (CSV relative to the document's folder), so
the reading's table is always the report's; a ``dataset_size.json`` in place of the CSV gives the
N sweep's table (memorized fraction, the halves' agreement and the copying denoiser's, per N), a
``verdicts.json`` the verdicts counted by data half, training seed and kind, with the variants.
"""

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_diff.errors import UserError

Row = dict[str, str]
START = re.compile(r"<!-- results table: (?P<csv>\S+)(?: split=(?P<split>\S+))? -->")
END = "<!-- end of results table -->"


def number(text: str | None) -> float | None:
    if text is None or text.strip() in ("", "nan"):
        return None
    value = float(text)
    return None if math.isnan(value) else value


def significant(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def interval(row: Row, column: str) -> str:
    """``v [lo, hi]`` from the CSV's three columns, ``v`` alone without bounds, ``-`` without a value."""
    value = number(row.get(column))
    if value is None:
        return "-"
    low, high = number(row.get(f"{column}_low")), number(row.get(f"{column}_high"))
    if low is None or high is None:
        return significant(value)
    return f"{significant(value)} [{significant(low)}, {significant(high)}]"


def measured(header: list[str], name: str) -> str | None:
    """The declared metric's column (``kid@256``, or ``kid_train@256`` without a test split)."""
    found = [column for column in header if re.fullmatch(rf"{name}(_train)?@\d+", column)]
    return found[0] if found else None


def columns(header: list[str]) -> list[tuple[str, Callable[[Row], str]]]:
    """The table's (heading, cell) pairs for a report CSV with ``header``."""
    kid, kid_std = measured(header, "kid"), measured(header, "kid_std")
    cells: list[tuple[str, Callable[[Row], str]]] = [
        ("variant", lambda row: row["variant"]),
        ("data", lambda row: row["split"] or "-"),
        ("seed", lambda row: row.get("seed") or "-"),  # a variant's second training seed is its own row
        ("verdict", lambda row: row.get("verdict") or "-"),
    ]
    if kid and kid_std:
        cells.append((f"{kid} ± std", lambda row: pair(number(row.get(kid)), number(row.get(kid_std)))))
    for name in ("fid", "precision", "recall", "density", "coverage"):
        column = measured(header, name)
        if column:
            cells.append((column, lambda row, column=column: significant(number(row.get(column)))))
    cells += [
        ("memorized (95% upper bound)", memorized),
        ("two-model agreement [95%]", lambda row: interval(row, "agreement")),
        ("r2 with the reference across seeds [95%]", cross_seed_r2),
        ("r2 minus the floor's [95%, paired]", lambda row: interval(row, "floor_difference")),
    ]
    for machine in [column.removeprefix("removes ") for column in header if re.fullmatch(r"removes [^_]+", column)]:
        cells.append((f"{machine} r2 [95%]", lambda row, m=machine: interval(row, f"r2 vs {m}")))
        cells.append((f"{machine} removes [95%]", lambda row, m=machine: interval(row, f"removes {m}")))
    return cells


def pair(value: float | None, spread: float | None) -> str:
    if value is None:
        return "-"
    return significant(value) if spread is None else f"{significant(value)} ± {significant(spread)}"


def memorized(row: Row) -> str:
    value, high = number(row.get("memorized_fraction")), number(row.get("memorized_fraction_high"))
    if value is None:
        return "-"
    return significant(value) if high is None else f"{significant(value)} (≤ {significant(high)})"


def cross_seed_r2(row: Row) -> str:
    """The same-noise r2 with the reference; one measured only at a shared training seed says so."""
    cell = interval(row, "r2_vs_reference")
    if cell != "-" and (row.get("reference_pairs") or "").startswith("same training seed only"):
        return f"{cell} (same seed only)"
    return cell


def read_report(path: Path) -> tuple[list[str], list[Row]]:
    if not path.is_file():
        raise UserError(f"report {path} does not exist; run python -m lightning_diff.report sweep=DIR first")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    missing = [column for column in ("variant", "split", "memorized_fraction") if column not in header]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(missing)}: it is not a report.csv of python -m lightning_diff.report"
        )
    return header, rows


def render(path: Path, split: str | None = None) -> str:
    """The table as Markdown: the rows of ``split`` (and the rows of no split) or every row."""
    header, rows = read_report(path)
    if split is not None:
        if not any(row["split"] == split for row in rows):
            found = sorted({row["split"] for row in rows if row["split"]})
            raise UserError(f"{path} has no row of split={split}; its splits: {', '.join(found) or 'none'}")
        rows = [row for row in rows if row["split"] in (split, "")]
    cells = columns(header)
    lines = ["| " + " | ".join(heading for heading, _ in cells) + " |", "|" + "|".join("---" for _ in cells) + "|"]
    lines += ["| " + " | ".join(cell(row).replace("|", "\\|") for _, cell in cells) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_sizes(path: Path) -> str:
    """The N sweep's table from the report's ``dataset_size.json``: per variant and training-set size,
    the memorized fraction, the halves' agreement and the copying empirical denoiser's beside it."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; run python -m lightning_diff.report on the N sweep first")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not JSON ({err}); run the report again") from err

    def cell(value: Any) -> str:
        if isinstance(value, dict):
            return f"{significant(value['value'])} [{significant(value['low'])}, {significant(value['high'])}]"
        return significant(value) if isinstance(value, float) else "-" if value is None else str(value)

    headings = ["variant", "N", "memorized (mean of the halves)", "two-model agreement [95%]",
                "empirical's two-model agreement [95%]", "r2 vs empirical", "runs"]
    keys = ["variant", "N", "memorized", "two-model agreement", "empirical's two-model agreement", "r2 vs empirical",
            "runs"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "|".join("---" for _ in headings) + "|"]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_verdicts(path: Path, split: str | None = None) -> str:
    """The verdicts of ``verdicts.json`` by group (data half, training seed, trained / fitted / data):
    per group and verdict, how many rows and which variants."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; run python -m lightning_diff.report first")
    try:
        judged = json.loads(path.read_text())
        groups, rows = judged["counts_by_group"], judged["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a verdicts.json of this version's report ({err}); run the report again") from err
    lines = ["| data, training seed, kind | verdict | rows | variants |", "|---|---|---|---|"]
    for group, counts in groups.items():
        if split is not None and not group.startswith(f"{split},"):
            continue
        for name, count in counts.items():
            if count:
                names = sorted(row["variant"] for row in rows if row["group"] == group and row["verdict"] == name)
                lines.append(f"| {group} | {name} | {count} | {', '.join(names)} |")
    return "\n".join(lines) + "\n"


def render_any(path: Path, split: str | None) -> str:
    """A report.csv's table, the N sweep's from a dataset_size.json, or the verdicts' from a verdicts.json."""
    if path.name == "dataset_size.json":
        return render_sizes(path)
    return render_verdicts(path, split) if path.name == "verdicts.json" else render(path, split)


def tables_in(document: Path) -> list[tuple[int, int, Path, str | None]]:
    """Each generated table of ``document``: its lines' span (after the start marker, to the end
    marker), its CSV and its split."""
    lines = document.read_text().splitlines()
    found = []
    for index, line in enumerate(lines):
        start = START.search(line)
        if not start:
            continue
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == END), None)
        if end is None:
            raise UserError(f"{document}:{index + 1}: a results table starts here but no '{END}' line ends it")
        found.append((index + 1, end, document.parent / start.group("csv"), start.group("split")))
    return found


def rewrite(document: Path) -> int:
    """Replace every generated table of ``document`` with the current one; returns how many."""
    tables = tables_in(document)
    lines = document.read_text().splitlines()
    for begin, end, path, split in reversed(tables):
        lines[begin:end] = render_any(path, split).splitlines()
    document.write_text("\n".join(lines) + "\n")
    return len(tables)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_diff.results_table", description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, nargs="?", help="a report.csv (not needed with --doc)")
    parser.add_argument("--split", help="only this data half's rows (and the rows of no half)")
    parser.add_argument("--doc", type=Path, help="rewrite the marked tables of this Markdown document instead")
    args = parser.parse_args(argv)
    try:
        if args.doc is not None:
            print(f"{args.doc}: {rewrite(args.doc)} table(s) written")
        elif args.report is not None:
            print(render(args.report, args.split), end="")
        else:
            parser.error("give a report.csv or --doc DOCUMENT")
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
