"""Every number a prose document quotes must be found in the files a run or report wrote.

A reading of results (docs/results.md) quotes numbers from its report's files; one retyped by
hand, computed in the head or left over from an older run is exactly what a reviewer cannot
trust. This check reads the document's prose (not its code blocks, inline code, link targets or
citations), takes every number in it at the precision it is written, and looks for a value in
the source files that rounds to it:

    python -m lightning_diff.quoted_numbers docs/results.md --root docs/results/study_rigor

prints each number it could not find, with its line, and exits 1 if there is one. ``0.46``
matches any value in [0.455, 0.465]; ``46%`` also matches 0.46 written as a fraction;
``1,000`` is 1000; ``16x16`` is two numbers. A comment ``<!-- numbers from: PATTERN ... -->``
narrows the files (glob patterns under the root) for the text after it, so a paragraph about
the seed floor must find its numbers in seed_floor.json and not anywhere in the study;
``<!-- numbers from: **/* -->`` widens it again. Source files: JSON (every number, also inside
strings), CSV, Markdown, text, logs and YAML (every number in the text); others are skipped.
"""

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_diff.errors import UserError

TEXT_SUFFIXES = {".csv", ".md", ".txt", ".log", ".yaml", ".yml"}
MINUS = "\u2212"
# A number: optional sign, digits with optional thousands commas, decimals, exponent, percent.
NUMBER = re.compile(
    rf"(?P<sign>[-{MINUS}])?"
    r"(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<exp>[-+]?\d+))?(?P<pct>%)?"
)
# Words after which a number names something (an issue, a paper, a year) rather than quoting a value.
REFERENCE_WORDS = re.compile(
    r"(?:\b(?:issues?|items?|arXiv|et al\.,?|ICML|NeurIPS|ICLR|CVPR|ECCV|Eq\.|equations?|sections?|commit)|#)$",
    re.IGNORECASE,
)
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:T[\d:]+Z?)?\b")
FENCE = re.compile(r"^\s*(```|~~~)")
DIRECTIVE = re.compile(r"<!--\s*numbers from:\s*(?P<patterns>.*?)\s*-->")
SKIPPED_SPANS = (
    re.compile(r"`[^`]*`"),  # inline code: commands, paths, config keys
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<!--.*?-->"),  # comments (directives are read before this)
    re.compile(r"https?://\S+"),
)


@dataclass(frozen=True)
class Quoted:
    """A number as the prose writes it: its value, the half-unit of its last digit, where it is."""

    text: str
    value: float
    half_unit: float
    percent: bool
    line: int
    sources: tuple[str, ...]


def parse_number(match: re.Match) -> tuple[float, float]:
    """The value of a NUMBER match and half a unit of its last written digit (its rounding)."""
    body = match.group("body").replace(",", "")
    decimals = len(body.split(".")[1]) if "." in body else 0
    exponent = int(match.group("exp") or 0)
    sign = -1.0 if match.group("sign") else 1.0
    return sign * float(body) * 10.0**exponent, 0.5 * 10.0 ** (exponent - decimals)


def blank(text: str, pattern: re.Pattern) -> str:
    """``text`` with the matches of ``pattern`` replaced by spaces (positions kept)."""
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def quoted_numbers(document: str) -> list[Quoted]:
    """The numbers of the document's prose with the source patterns in force where each stands."""
    found: list[Quoted] = []
    sources: tuple[str, ...] = ("**/*",)
    in_code = False
    for number, line in enumerate(document.splitlines(), start=1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        directive = DIRECTIVE.search(line)
        if directive:
            sources = tuple(directive.group("patterns").split()) or ("**/*",)
        prose = line
        for pattern in SKIPPED_SPANS + (DATE,):
            prose = blank(prose, pattern)
        # 16x16, 3x32x32: the sizes are numbers, the x between them is not a letter of a name.
        prose = re.sub(r"(?<=\d)[x×](?=\d)", " ", prose)
        for match in NUMBER.finditer(prose):
            start, end = match.span()
            before = prose[:start]
            after = prose[end : end + 1]
            # Part of a name (fid@256, half_a, paper_seed1, v3) or a reference (issue 22, et al. 2019).
            previous = before[-1:]
            if (previous.isalnum() and not match.group("sign")) or (previous and previous in "_@.#"):
                continue
            if match.group("sign") and previous.isalpha():  # CIFAR-10, GPT-4: a name, not a negative number
                continue
            if (after.isalpha() and after not in "x×") or after == "_":
                continue
            if REFERENCE_WORDS.search(before.rstrip(" (")):
                continue
            value, half_unit = parse_number(match)
            if match.group("sign") and previous.isalnum():  # 3-5: a range, not a negative 5
                value = abs(value)
            found.append(Quoted(match.group(0), value, half_unit, bool(match.group("pct")), number, sources))
    return found


def numbers_in_text(text: str) -> list[float]:
    """Every number written in a source file's text (names included: a CSV header's fid@256 is 256)."""
    return [parse_number(m)[0] for m in NUMBER.finditer(text.replace(MINUS, "-"))]


def numbers_in_json(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)] if math.isfinite(value) else []
    if isinstance(value, str):
        return numbers_in_text(value)
    if isinstance(value, dict):
        return [x for key, item in value.items() for x in numbers_in_text(str(key)) + numbers_in_json(item)]
    if isinstance(value, list):
        return [x for item in value for x in numbers_in_json(item)]
    return []


def file_values(path: Path) -> list[float]:
    """The numbers one source file holds (none for binary files such as samples.npz or figures)."""
    if path.suffix == ".json":
        try:
            return numbers_in_json(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON ({err}); the check reads the files a report wrote") from err
    if path.suffix in TEXT_SUFFIXES:
        return numbers_in_text(path.read_text(errors="replace"))
    return []


class Sources:
    """The files under ``root``, their numbers read once each and kept sorted per pattern set."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise UserError(f"source folder {root} does not exist; pass the folder of the report's files (--root)")
        self.root = root
        self._per_file: dict[Path, list[float]] = {}
        self._per_patterns: dict[tuple[str, ...], np.ndarray] = {}

    def files(self, patterns: tuple[str, ...]) -> list[Path]:
        matched = sorted({p for pattern in patterns for p in self.root.glob(pattern) if p.is_file()})
        if not matched:
            raise UserError(
                f"<!-- numbers from: {' '.join(patterns)} --> matches no file under {self.root}; "
                "name files (glob patterns) relative to the source folder"
            )
        return matched

    def values(self, patterns: tuple[str, ...]) -> np.ndarray:
        if patterns not in self._per_patterns:
            found = []
            for path in self.files(patterns):
                if path not in self._per_file:
                    self._per_file[path] = file_values(path)
                found.extend(self._per_file[path])
            self._per_patterns[patterns] = np.sort(np.asarray(found, dtype=np.float64))
        return self._per_patterns[patterns]


def within(values: np.ndarray, target: float, half_unit: float) -> bool:
    """Whether some value rounds to ``target`` at the precision ``half_unit`` describes."""
    slack = half_unit * (1 + 1e-9) + 1e-12 * abs(target)
    lo = np.searchsorted(values, target - slack, side="left")
    return bool(lo < len(values) and values[lo] <= target + slack)


def found(quoted: Quoted, values: np.ndarray) -> bool:
    """Whether the source values hold ``quoted`` (a percentage also as a fraction)."""
    if within(values, quoted.value, quoted.half_unit):
        return True
    return quoted.percent and within(values, quoted.value / 100, quoted.half_unit / 100)


def document_numbers(document: Path) -> list[Quoted]:
    """The numbers of ``document``'s prose (see :func:`quoted_numbers`)."""
    if not document.is_file():
        raise UserError(f"document {document} does not exist")
    return quoted_numbers(document.read_text())


def unfound(quoted: list[Quoted], root: Path) -> list[Quoted]:
    """The ``quoted`` numbers that no source file under ``root`` (as narrowed) holds."""
    sources = Sources(root)
    return [q for q in quoted if not found(q, sources.values(q.sources))]


def unfound_numbers(document: Path, root: Path) -> list[Quoted]:
    """The numbers of ``document``'s prose that no source file under ``root`` (as narrowed) holds."""
    return unfound(document_numbers(document), root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_diff.quoted_numbers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("document", type=Path, help="the prose (Markdown) whose numbers are checked")
    parser.add_argument("--root", type=Path, required=True, help="the folder of the files the numbers come from")
    args = parser.parse_args(argv)
    try:
        numbers = document_numbers(args.document)
        missing = unfound(numbers, args.root)
    except UserError as err:
        sys.exit(f"error: {err}")
    for quoted in missing:
        files = " ".join(quoted.sources)
        print(f"{args.document}:{quoted.line}: {quoted.text} is in no file of {files} under {args.root}")
    print(f"{len(numbers) - len(missing)} of {len(numbers)} numbers found in {args.root}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
