"""`mcckd prepare`: the records it writes, its report, its errors, and the shared SVAMP file."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcckd.cli import main
from mcckd.data import read_records

SHARED_DATA = Path(
    os.environ.get("MCCKD_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
)
SVAMP_TRAIN = SHARED_DATA / "mcckd-official" / "SVAMP" / "train.json"

QUESTIONS = [
    {
        "instruction": "Tom has 12 apples and gets 20 more. How many apples?\n",
        "label": "32",
        "output": [
            "Start with 12 apples. Twenty more arrive. Counting on from twenty by twelve reaches 32.",
            "12 + 20 = 30. The answer is 30.",
            "Start with 12 apples. Twenty more arrive. Together that makes 32 apples in the basket.",
            "Start with 12 apples. Twenty more arrive. Together that makes 32 apples in the basket.",
            "Counting on from twenty by twelve reaches thirty-two, written 32 as digits.",
        ],
    },
    {
        "instruction": "A pen costs $1.50. How much do 2 pens cost?\n",
        "label": "3",
        "output": [
            "2 x 1.50 = 3.00 dollars.",
            "I do not know.",
        ],
    },
    {
        "instruction": "What is 5 - 7?\n",
        "label": "-2",
        "output": ["5 - 7 = 2", "Therefore, the answer is 12."],
    },
]


def prepare(tmp_path, text, *options):
    source = tmp_path / "teacher.json"
    source.write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["prepare", str(source), "--task", "svamp", "--k", "2", "--out", str(out), *options])
    return code, source, out


def test_prepare_writes_the_chosen_rationales_and_reports(tmp_path, capsys):
    code, _, out = prepare(tmp_path, json.dumps(QUESTIONS))
    assert code == 0
    records = read_records(out)
    assert [(r.id, r.answer) for r in records] == [("svamp-0", "32"), ("svamp-1", "3")]
    assert records[0].rationales == [QUESTIONS[0]["output"][2], QUESTIONS[0]["output"][4]]
    assert records[1].rationales == ["2 x 1.50 = 3.00 dollars."]
    report = capsys.readouterr().out
    assert "read 3 questions with 9 rationales" in report
    for reason, count in [("no answer found", 1), ("wrong answer", 3), ("exact duplicate", 1),
                          ("near duplicate", 0), ("not chosen", 1), ("no rationale left", 1)]:
        assert f"  {reason}".ljust(20) in report and report.split(f"  {reason}")[1].split()[0] == str(count)
    assert "kept 2 questions with 3 rationales, 1 of them with two or more" in report
    histogram = report.split("rationales per question:\n")[1].splitlines()[:2]
    assert [line.split()[:2] for line in histogram] == [["1", "1"], ["2", "1"]]
    assert "3-gram Jaccard similarity" in report and "(1 questions with two or more)" in report


def test_min_rationales_drops_questions_with_fewer(tmp_path, capsys):
    code, _, out = prepare(tmp_path, json.dumps(QUESTIONS), "--min-rationales", "2")
    assert code == 0
    assert [r.id for r in read_records(out)] == ["svamp-0"]
    assert "fewer than 2 rationales left" in capsys.readouterr().out


def test_malformed_line_exits_2_naming_it_and_writes_nothing(tmp_path, capsys):
    lines = [json.dumps(question) for question in QUESTIONS]
    lines[1] = lines[1][:-1]  # cut the closing brace
    code, source, out = prepare(tmp_path, "\n".join(lines) + "\n")
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"mcckd: error: {source}:2: invalid JSON")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["teacher.json"]


def test_bad_option_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        prepare(tmp_path, "[]", "--ngram", "0")
    assert exit_info.value.code == 2


def test_python_dash_m_runs_the_command(tmp_path):
    source = tmp_path / "teacher.jsonl"
    source.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4", "rationales": ["2 + 2 = 4."]}))
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcckd",
            "prepare",
            str(source),
            "--task",
            "gsm8k",
            "--k",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "kept 1 questions with 1 rationales" in result.stdout
    assert read_records(out)[0].rationales == ["2 + 2 = 4."]


def jsonl(*rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


GOOD = {"id": "a", "question": "What is 2 + 2?", "answer": "4", "rationales": ["2 + 2 = 4."]}


@pytest.mark.parametrize("text", ["", "\n  \n\t\n"])
def test_an_empty_input_is_an_error(tmp_path, capsys, text):
    code, source, out = prepare(tmp_path, text)
    assert code == 2
    assert capsys.readouterr().err == f"mcckd: error: {source}: no records (the input is empty)\n"
    assert not out.exists()


REFUSED = [
    # (the second record, the reason prepare gives for it)
    ({**GOOD, "id": "b", "rationales": []}, "the record has no rationales"),
    ({"id": "b", "question": "What is 3 + 3?", "answer": "6"}, "the record has no rationales"),
    ({**GOOD, "id": "b", "rationales": ["", " "]}, "the record has no rationales"),
    ({**GOOD, "question": "What is 1 + 3?"}, "the id 'a' is already used at {source}:1"),
    ({"id": "b", "question": "What is 3 + 3?", "answer": "six", "rationales": ["6"]},
     "answer 'six' is not a valid svamp answer"),
]


@pytest.mark.parametrize("record, reason", REFUSED)
def test_invalid_records_are_errors_naming_their_line(tmp_path, capsys, record, reason):
    code, source, out = prepare(tmp_path, jsonl(GOOD, record))
    assert code == 2
    message = f"{source}:2: {reason.format(source=source)} (--skip-invalid skips such records)"
    assert capsys.readouterr().err == f"mcckd: error: {message}\n"
    assert not out.exists()


@pytest.mark.parametrize("record, reason", REFUSED)
def test_skip_invalid_skips_them_with_their_line_and_reason(tmp_path, capsys, record, reason):
    third = {"id": "c", "question": "What is 5 + 5?", "answer": "10", "rationales": ["5 + 5 = 10."]}
    code, source, out = prepare(tmp_path, jsonl(GOOD, record, third), "--skip-invalid")
    assert code == 0
    assert [r.id for r in read_records(out)] == ["a", "c"]
    captured = capsys.readouterr()
    assert captured.err == f"mcckd prepare: skipped {source}:2: {reason.format(source=source)}\n"
    assert "skipped 1 invalid records" in captured.out and "read 2 questions" in captured.out


def test_skip_invalid_with_nothing_valid_left_is_an_error(tmp_path, capsys):
    code, source, _ = prepare(tmp_path, jsonl({**GOOD, "rationales": []}), "--skip-invalid")
    assert code == 2
    assert capsys.readouterr().err.endswith(f"mcckd: error: {source}: no valid records (1 skipped)\n")


def test_a_byte_order_mark_is_accepted(tmp_path):
    source = tmp_path / "teacher.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + jsonl(GOOD).encode("utf-8"))
    out = tmp_path / "o.jsonl"
    assert main(["prepare", str(source), "--task", "svamp", "--k", "2", "--out", str(out)]) == 0
    assert [r.id for r in read_records(tmp_path / "o.jsonl")] == ["a"]


def test_invalid_utf8_is_reported_with_its_line(tmp_path, capsys):
    source = tmp_path / "teacher.jsonl"
    source.write_bytes(jsonl(GOOD, {**GOOD, "id": "b"}).encode("utf-8") + b'{"id": "c\xe9"}\n')
    code = main(["prepare", str(source), "--task", "svamp", "--k", "2", "--out", str(tmp_path / "o.jsonl")])
    assert code == 2
    message = f"{source}:3: not valid UTF-8 (byte 10 of the line, 0xe9)"
    assert capsys.readouterr().err == f"mcckd: error: {message}\n"


@pytest.mark.skipif(not SVAMP_TRAIN.is_file(), reason=f"{SVAMP_TRAIN} is absent")
def test_prepare_on_the_shared_svamp_file(tmp_path, capsys):
    out = tmp_path / "svamp.jsonl"
    started = time.perf_counter()
    code = main(["prepare", str(SVAMP_TRAIN), "--task", "svamp", "--k", "4", "--out", str(out)])
    elapsed = time.perf_counter() - started
    assert code == 0
    records = read_records(out)
    counts = [len(record.rationales) for record in records]
    assert sum(count >= 2 for count in counts) >= 600
    assert max(counts) == 4 and min(counts) >= 1
    report = capsys.readouterr().out
    assert "read 700 questions with 7000 rationales" in report
    assert f"kept {len(records)} questions with {sum(counts)} rationales" in report
    assert elapsed < 60
