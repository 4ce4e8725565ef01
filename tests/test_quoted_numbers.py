"""The check that a reading's numbers are found in its report's files (lightning_diff/quoted_numbers.py)."""

import json

import pytest

from lightning_diff.errors import UserError
from lightning_diff.quoted_numbers import main, quoted_numbers, unfound_numbers


def texts(document: str) -> list[str]:
    return [q.text for q in quoted_numbers(document)]


def test_prose_numbers_are_read_and_names_code_links_and_references_are_not():
    document = "\n".join([
        "The paper UNet's kid@256 is 0.0373 ± 0.0022 on half_a, fid@256 68.1, 1,000 images at 16x16.",
        "Run `python -m lightning_diff.report sweep=docs/results/x` (see [the file](results/run_2.json)).",
        "As issue 22 says (Kynkäänniemi et al. 2019; arXiv 2605.16415), on 2026-12-06T22:47:07Z.",
        "```",
        "0.999 in a code block",
        "```",
        "A 12% share, a ratio of 1.3x, an interval [−0.0005, 0.0020] and t = 1e-3; paper_seed1 and r2; CIFAR-10.",
        "<!-- numbers from: grid/*.json --> seeds 3-5.",
    ])
    assert texts(document) == [
        "0.0373", "0.0022", "68.1", "1,000", "16", "16",
        "12%", "1.3", "\u22120.0005", "0.0020", "1e-3",
        "3", "-5",
    ]
    quoted = quoted_numbers(document)
    assert quoted[-1].value == 5 and quoted[-1].sources == ("grid/*.json",)  # a range, not a negative number
    assert quoted[0].sources == ("**/*",)
    assert quoted[8].value == pytest.approx(-0.0005)
    assert quoted[10].value == pytest.approx(1e-3) and quoted[10].half_unit == pytest.approx(5e-4)


def write_sources(root):
    (root / "grid").mkdir(parents=True)
    (root / "grid" / "verdicts.json").write_text(json.dumps({"counts": {"differs": 12}, "note": "floor 0.9856 [0.9837, 0.9881]"}))
    (root / "grid" / "report.csv").write_text("variant,fid@256,kid@256\npaper,68.08,0.03727\n")
    (root / "seed_floor.json").write_text(json.dumps({"r2": 0.46313, "pairs": [[1, 2]]}))
    (root / "samples.npz").write_bytes(b"\x00\x01 0.5555 binary")


def test_numbers_match_at_their_written_precision_and_nowhere_else(tmp_path):
    write_sources(tmp_path / "src")
    doc = tmp_path / "reading.md"
    doc.write_text(
        "paper: fid 68.1, kid 0.0373, 12 differ; floor 0.9856 [0.984, 0.988]; removes 46% (0.463).\n"
        "Wrong: fid 68.2, kid 0.037 is fine but 0.0374 is not, 0.5555 is only in a binary file.\n"
    )
    missing = [q.text for q in unfound_numbers(doc, tmp_path / "src")]
    assert missing == ["68.2", "0.0374", "0.5555"]


def test_a_directive_narrows_the_files_a_paragraph_may_quote(tmp_path):
    write_sources(tmp_path / "src")
    doc = tmp_path / "reading.md"
    doc.write_text(
        "<!-- numbers from: seed_floor.json -->\nThe floor's r2 is 0.463 but fid 68.1 is not from the floor.\n"
        "<!-- numbers from: **/* -->\nfid 68.1 again.\n"
    )
    assert [(q.text, q.line) for q in unfound_numbers(doc, tmp_path / "src")] == [("68.1", 2)]


def test_bad_input_is_one_clear_error(tmp_path):
    write_sources(tmp_path / "src")
    doc = tmp_path / "reading.md"
    doc.write_text("<!-- numbers from: nothing/*.json -->\n0.5\n")
    with pytest.raises(UserError, match="matches no file"):
        unfound_numbers(doc, tmp_path / "src")
    with pytest.raises(UserError, match="does not exist"):
        unfound_numbers(doc, tmp_path / "absent")
    (tmp_path / "src" / "broken.json").write_text("{")
    doc.write_text("0.5\n")
    with pytest.raises(UserError, match="not valid JSON"):
        unfound_numbers(doc, tmp_path / "src")


def test_the_command_lists_what_it_cannot_find_and_fails(tmp_path, capsys):
    write_sources(tmp_path / "src")
    doc = tmp_path / "reading.md"
    doc.write_text("fid 68.1\nfid 70.3\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(doc), "--root", str(tmp_path / "src")])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert f"{doc}:2: 70.3 is in no file" in out and "1 of 2 numbers found" in out
    doc.write_text("fid 68.1\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(doc), "--root", str(tmp_path / "src")])
    assert exit_info.value.code == 0
