"""Reading both record layouts (JSON array, JSON lines, gzip), errors by line, atomic writes."""
import gzip
import json

import pytest

from mcckd.data import Record, read_records, write_records
from mcckd.errors import InputError

PAPER_RECORDS = [
    {"instruction": "Tom has 3 apples and buys 4 more. How many apples?\n",
     "output": ["3 + 4 = 7. The answer is 7.", "He buys 4, so 3 + 4 = 7."], "label": "7"},
    {"instruction": "What is 1,000 + 200?\n", "output": "1,000 + 200 = 1,200", "label": "1,200"},
    {"instruction": "What is 2 + 2?\n", "output": "", "label": 4},
]


def write_text(path, text):
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["paper.json", "paper.json.gz", "paper.jsonl", "paper.jsonl.gz"])
def test_paper_layout_as_array_or_lines(tmp_path, name):
    if ".jsonl" in name:
        text = "\n".join(json.dumps(record) for record in PAPER_RECORDS) + "\n"
    else:
        text = json.dumps(PAPER_RECORDS, indent=2)
    records = read_records(write_text(tmp_path / name, text), "svamp")
    assert records == [
        Record("svamp-0", "svamp", "Tom has 3 apples and buys 4 more. How many apples?", "7",
               ["3 + 4 = 7. The answer is 7.", "He buys 4, so 3 + 4 = 7."]),
        Record("svamp-1", "svamp", "What is 1,000 + 200?", "1200", ["1,000 + 200 = 1,200"]),
        Record("svamp-2", "svamp", "What is 2 + 2?", "4", []),
    ]


def test_canonical_records_round_trip(tmp_path):
    records = [
        Record(
            "q-a",
            "csqa",
            "Where is money kept? Answer Choices:\nA. bank\nB. tree",
            "A",
            ["Banks keep money."],
        ),
        Record("q-b", "strategyqa", "Is ice cold?", "yes", ["Ice is frozen water, so yes.", "Yes, it is."]),
        # written unescaped: line separators other than "\n" must not end a JSON line
        Record("q-c", "svamp", "What is 1 + 1?", "2", ["1 + 1\u2028= 2\x85\r done"]),
    ]
    for name in ["out.jsonl", "out.jsonl.gz"]:
        write_records(tmp_path / name, records)
        assert read_records(tmp_path / name) == records
    first_line = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(first_line) == {"id": "q-a", "task": "csqa", "question": records[0].question,
                                      "answer": "A", "rationales": ["Banks keep money."]}


ERROR_CASES = [
    # (file text, expected line, expected message part)
    (
        '{"question": "q1", "answer": "1", "rationales": []}\n{"question": "q2", "answer": \n',
        2,
        "invalid JSON",
    ),
    (
        '{"question": "q1", "answer": "1"}\n\n{"question": "q2", "answer": "two"}\n',
        3,
        "not a valid svamp answer",
    ),
    ('{"question": "q1", "answer": "1"}\n[1, 2]\n', 2, "expected a JSON object"),
    ('{"question": "q1", "answer": "1", "rationales": "one"}\n', 1, "list of strings"),
    ('{"question": "q1", "answer": "1", "task": "csqa"}\n', 1, "the record's task is 'csqa'"),
    ('{"prompt": "q1"}\n', 1, "expected the keys"),
    (
        '[\n  {"instruction": "q1", "output": [], "label": "1"},\n  {"instruction": "q2",\n   "output": [3],'
        ' "label": "2"}\n]\n',
        3,
        "list of strings",
    ),
    (
        '[\n  {"instruction": "q1", "output": [], "label": "1"},\n  {"instruction": "q2" "label": "2"}\n]\n',
        3,
        "invalid JSON",
    ),
    (
        '[\n  {"instruction": "q1", "output": [], "label": "1"}\n  {"instruction": "q2", "label": "2"}\n]\n',
        3,
        "expected ',' or ']'",
    ),
    ('[\n  {"instruction": "q1", "output": [], "label": "1"},\n', 3, "not closed"),
]


@pytest.mark.parametrize("text, line, message", ERROR_CASES)
def test_malformed_input_names_file_and_line(tmp_path, text, line, message):
    path = write_text(tmp_path / "bad.json", text)
    with pytest.raises(InputError) as error:
        read_records(path, "svamp")
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert message in str(error.value)


def test_record_without_a_task_needs_one(tmp_path):
    path = write_text(tmp_path / "paper.json", json.dumps(PAPER_RECORDS))
    with pytest.raises(InputError, match="names no task"):
        read_records(path)


def test_failed_write_leaves_neither_output_nor_temporary_file(tmp_path):
    def records():
        yield Record("a", "svamp", "q", "1", ["r"])
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError):
        write_records(tmp_path / "out.jsonl", records())
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_an_existing_file_whole(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old contents\n")
    write_records(out, [Record("a", "svamp", "q", "1", ["r"])])
    assert [record.id for record in read_records(out)] == ["a"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.jsonl"]


def test_written_file_gets_the_mode_of_a_new_file(tmp_path):
    reference = tmp_path / "reference"
    reference.touch()
    write_records(tmp_path / "out.jsonl", [])
    assert (tmp_path / "out.jsonl").stat().st_mode == reference.stat().st_mode


@pytest.mark.parametrize("name", ["bom.json", "bom.jsonl", "bom.jsonl.gz"])
def test_a_byte_order_mark_is_skipped(tmp_path, name):
    text = "\ufeff" + (json.dumps(PAPER_RECORDS) if name == "bom.json" else
                        "\n".join(json.dumps(record) for record in PAPER_RECORDS))
    assert [r.id for r in read_records(write_text(tmp_path / name, text), "svamp")] == [
        "svamp-0", "svamp-1", "svamp-2"]


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz"])
def test_invalid_utf8_names_its_line_and_column(tmp_path, name):
    data = (json.dumps(PAPER_RECORDS[0]) + "\n\n").encode("utf-8") + b'{"instruction": "caf\xc3("}\n'
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    with pytest.raises(InputError) as error:
        read_records(path, "svamp")
    assert str(error.value) == f"{path}:3: not valid UTF-8 (byte 21 of the line, 0xc3)"


def test_an_input_without_records_is_an_error(tmp_path):
    for text in ("", "  \n\n", "[]"):
        with pytest.raises(InputError, match=r"empty.json: no records \(the input is empty\)"):
            read_records(write_text(tmp_path / "empty.json", text), "svamp")
