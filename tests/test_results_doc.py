"""docs/results.md is a reading of its report's files: its tables are the report's, its numbers are in them.

Issue 22: a number in the reading that no file the study wrote holds fails here, and so does a
table that is not what ``results_table`` renders from the report's CSV today (re-render with
``python -m lightning_diff.results_table --doc docs/results.md`` after the study changes).
"""

from pathlib import Path

from lightning_diff.quoted_numbers import unfound_numbers
from lightning_diff.results_table import render_any, tables_in

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "results.md"
SOURCES = DOCUMENT.parent / "results"


def test_the_reading_has_generated_tables_and_they_are_current():
    tables = tables_in(DOCUMENT)
    assert tables, "docs/results.md has no generated results table"
    lines = DOCUMENT.read_text().splitlines()
    for begin, end, path, split in tables:
        written = "\n".join(lines[begin:end]) + "\n"
        assert written == render_any(path, split), (
            f"docs/results.md:{begin}: the table of {path.name} (split={split}) is not the report's; "
            "rerun python -m lightning_diff.results_table --doc docs/results.md"
        )


def test_every_number_of_the_reading_is_in_the_files_its_paragraph_names():
    missing = unfound_numbers(DOCUMENT, SOURCES)
    assert not missing, "numbers of docs/results.md in no file of docs/results/:\n" + "\n".join(
        f"  line {q.line}: {q.text} (sources: {' '.join(q.sources)})" for q in missing
    )
