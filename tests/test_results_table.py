"""The reading's table written from a report's CSV (lightning_diff/results_table.py)."""

import csv
import json

import pytest

from lightning_diff.errors import UserError
from lightning_diff.results_table import main, render, rewrite

HEADER = [
    "variant", "split", "seed", "memorized_fraction", "memorized_fraction_low", "memorized_fraction_high",
    "fid@256", "kid@256", "kid_std@256", "precision@256", "recall@256", "density@256", "coverage@256",
    "r2 vs els", "r2 vs els_low", "r2 vs els_high", "r2 vs linear", "removes els", "removes els_low", "removes els_high",
    "agreement", "agreement_low", "agreement_high", "r2_vs_reference", "r2_vs_reference_low", "r2_vs_reference_high",
    "reference_pairs", "floor_difference", "floor_difference_low", "floor_difference_high", "verdict",
]


def write_report(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


ROWS = [
    {"variant": "no_skip", "split": "half_a", "seed": 0, "memorized_fraction": 0.0, "memorized_fraction_low": 0.0,
     "memorized_fraction_high": 0.014306, "fid@256": 120.41, "kid@256": 0.0912345, "kid_std@256": 0.00312,
     "precision@256": 0.5, "recall@256": 0.25, "density@256": 0.4, "coverage@256": 0.2, "r2 vs els": 0.61234,
     "r2 vs els_low": 0.6, "r2 vs els_high": 0.63, "r2 vs linear": 0.5, "removes els": 0.21, "removes els_low": 0.1,
     "removes els_high": 0.3, "agreement": 0.9, "agreement_low": 0.88, "agreement_high": 0.92,
     "r2_vs_reference": 0.7, "r2_vs_reference_low": 0.68, "r2_vs_reference_high": 0.72,
     "reference_pairs": "no_skip (seed 0) vs paper (seed 1)", "floor_difference": -0.28,
     "floor_difference_low": -0.3, "floor_difference_high": -0.26, "verdict": "differs, less realistic"},
    {"variant": "max_pool", "split": "half_b", "seed": 0, "memorized_fraction": 0.0, "r2_vs_reference": 0.99,
     "r2_vs_reference_low": 0.98, "r2_vs_reference_high": 0.995,
     "reference_pairs": "same training seed only: max_pool (seed 0) vs paper (seed 0)", "verdict": "undetermined"},
    {"variant": "seed-to-seed floor (paper x 3 seeds)", "split": "", "r2_vs_reference": 0.986},
]


def test_the_table_shows_the_columns_a_conclusion_rests_on(tmp_path):
    report = tmp_path / "report.csv"
    write_report(report, ROWS)
    lines = render(report).splitlines()
    assert lines[0] == (
        "| variant | data | seed | verdict | kid@256 ± std | fid@256 | precision@256 | recall@256 | density@256 | coverage@256 "
        "| memorized (95% upper bound) | two-model agreement [95%] | r2 with the reference across seeds [95%] "
        "| r2 minus the floor's [95%, paired] | els r2 [95%] | els removes [95%] |"
    )
    assert lines[2] == (
        "| no_skip | half_a | 0 | differs, less realistic | 0.09123 ± 0.00312 | 120.4 | 0.5 | 0.25 | 0.4 | 0.2 | 0 (≤ 0.01431) "
        "| 0.9 [0.88, 0.92] | 0.7 [0.68, 0.72] | -0.28 [-0.3, -0.26] | 0.6123 [0.6, 0.63] | 0.21 [0.1, 0.3] |"
    )
    # A comparison at the same training seed is marked; missing values are '-'.
    assert "| 0.99 [0.98, 0.995] (same seed only) |" in lines[3]
    assert lines[3].startswith("| max_pool | half_b | 0 | undetermined | - | - |")
    assert lines[4].startswith("| seed-to-seed floor (paper x 3 seeds) | - | - | - |")


def test_a_split_keeps_its_rows_and_the_rows_of_no_split(tmp_path):
    report = tmp_path / "report.csv"
    write_report(report, ROWS)
    variants = [line.split(" | ")[0] for line in render(report, "half_a").splitlines()[2:]]
    assert variants == ["| no_skip", "| seed-to-seed floor (paper x 3 seeds)"]
    with pytest.raises(UserError, match="no row of split=half_c; its splits: half_a, half_b"):
        render(report, "half_c")


def test_the_document_table_is_rewritten_between_its_markers(tmp_path, capsys):
    (tmp_path / "grid").mkdir()
    write_report(tmp_path / "grid" / "report.csv", ROWS)
    doc = tmp_path / "results.md"
    doc.write_text("# Reading\n\n<!-- results table: grid/report.csv split=half_b -->\n| old |\n<!-- end of results table -->\n\nAfter.\n")
    main(["--doc", str(doc)])
    text = doc.read_text()
    assert "| old |" not in text and "| max_pool | half_b |" in text and "| no_skip |" not in text
    assert text.endswith("<!-- end of results table -->\n\nAfter.\n")
    assert rewrite(doc) == 1 and doc.read_text() == text  # idempotent
    assert "1 table(s) written" in capsys.readouterr().out


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist; run python -m lightning_diff.report"):
        render(tmp_path / "absent.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a report.csv"):
        render(tmp_path / "other.csv")
    doc = tmp_path / "results.md"
    doc.write_text("<!-- results table: other.csv -->\n| x |\n")
    with pytest.raises(UserError, match="no '<!-- end of results table -->' line ends it"):
        rewrite(doc)


def test_the_n_sweeps_table_comes_from_dataset_size_json(tmp_path):
    sizes = tmp_path / "dataset_size.json"
    sizes.write_text(json.dumps([
        {"variant": "paper", "N": 200, "memorized": 0.3515625, "two-model agreement": {"value": 0.649, "low": 0.618, "high": 0.6795},
         "empirical's two-model agreement": {"value": 0.5152, "low": 0.4772, "high": 0.5526}, "r2 vs empirical": 0.7552, "runs": 2},
        {"variant": "paper", "N": 2000, "memorized": 0.0, "two-model agreement": None,
         "empirical's two-model agreement": None, "r2 vs empirical": None, "runs": 1},
    ]))
    document = tmp_path / "reading.md"
    document.write_text("N sweep:\n<!-- results table: dataset_size.json -->\nold\n<!-- end of results table -->\n")
    assert rewrite(document) == 1
    lines = document.read_text().splitlines()
    assert lines[2].startswith("| variant | N | memorized (mean of the halves) | two-model agreement [95%] |")
    assert lines[4] == "| paper | 200 | 0.3516 | 0.649 [0.618, 0.6795] | 0.5152 [0.4772, 0.5526] | 0.7552 | 2 |"
    assert lines[5] == "| paper | 2000 | 0 | - | - | - | 1 |"
    sizes.write_text("{not json")
    with pytest.raises(UserError, match="is not JSON"):
        rewrite(document)


def test_the_verdicts_table_counts_by_group_and_names_the_variants(tmp_path):
    verdicts = tmp_path / "verdicts.json"
    rows = [{"variant": v, "group": g, "verdict": d} for v, g, d in [
        ("max_pool", "half_a, seed 0, trained", "same generator"), ("attention", "half_a, seed 0, trained", "same generator"),
        ("no_skip", "half_a, seed 0, trained", "differs, less realistic"), ("paper", "half_b, seed 0, trained", "undetermined")]]
    verdicts.write_text(json.dumps({"rows": rows, "counts_by_group": {
        "half_a, seed 0, trained": {"copies": 0, "same generator": 2, "differs, less realistic": 1},
        "half_b, seed 0, trained": {"undetermined": 1}}}))
    document = tmp_path / "reading.md"
    document.write_text("<!-- results table: verdicts.json split=half_a -->\n<!-- end of results table -->\n")
    rewrite(document)
    assert document.read_text().splitlines()[1:5] == [
        "| data, training seed, kind | verdict | rows | variants |", "|---|---|---|---|",
        "| half_a, seed 0, trained | same generator | 2 | attention, max_pool |",
        "| half_a, seed 0, trained | differs, less realistic | 1 | no_skip |",
    ]
    verdicts.write_text(json.dumps({"rows": rows, "counts": {}}))  # an older report: no groups
    with pytest.raises(UserError, match="not a verdicts.json of this version"):
        rewrite(document)
