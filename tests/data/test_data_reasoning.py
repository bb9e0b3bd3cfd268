r"""Reasoning teachers: think blocks, \boxed{} and #### answers, LaTeX, closing statements, and
`mcckd prepare` on a corpus of teacher outputs written in those styles."""
import json
from collections import Counter
from pathlib import Path

import pytest

from mcckd.cli import main
from mcckd.data import extract_answer, load_task_file, read_records
from mcckd.data.reasoning import (
    answer_passages,
    last_boxed,
    latex_to_text,
    strip_answer_sentence,
    strip_emphasis,
    training_rationale,
)

HERE = Path(__file__).parent
CORPUS = [json.loads(line) for line in (HERE / "reasoning_teachers.jsonl").read_text().splitlines()]
TASK_FILES = {"mmlu-pro": HERE / "tasks" / "mmlu-pro.yaml", "capital": HERE / "tasks" / "capital.yaml"}


@pytest.mark.parametrize("latex, text", [
    (r"\frac{3}{4}", "3/4"),
    (r"\dfrac{3}{4}", "3/4"),
    (r"\tfrac34", "3/4"),
    (r"-\frac{1}{2}", "-1/2"),
    (r"2\frac{1}{2}", "5/2"),  # a mixed number
    (r"\frac{a+1}{2}", "(a+1)/2"),
    (r"\frac{\text{3}}{\sqrt{4}}", r"3/(\sqrt4)"),
    (r"1{,}200", "1,200"),
    (r"1\,000", "1000"),
    (r"\$18.50", "$18.50"),
    (r"25\%", "25%"),
    (r"70^\circ", "70"),
    (r"90^{\circ}", "90"),
    (r"5\text{ cm}", "5 cm"),
    (r"\textbf{\text{Paris}}", "Paris"),
    (r"\left(3\right)", "(3)"),
    (r"x = 5\,\text{km}", "x = 5 km"),
    ("plain text, untouched", "plain text, untouched"),
    ("{5} apples", "5 apples"),  # braces alone are markup too
    ("a back\\", "a back\\"),  # a backslash that ends the text stays
])
def test_latex_to_text(latex, text):
    assert latex_to_text(latex) == text


def test_last_boxed_takes_the_last_and_nests():
    text = r"\boxed{1} then \boxed{\frac{\text{3}}{4}} and \boxed{unclosed"
    start, end, content = last_boxed(text)
    assert content == r"\frac{\text{3}}{4}" and text[start:end] == r"\boxed{\frac{\text{3}}{4}}"
    assert last_boxed(r"\boxed{\{x\}}")[2] == r"\{x\}"  # escaped braces are not groups
    assert last_boxed("no box here") is None


@pytest.mark.parametrize("text, plain", [
    ("**Answer: (B)**", "Answer: (B)"),
    ("The answer is __no__.", "The answer is no."),
    ("So *42* in all", "So 42 in all"),
    ("3 * 4 * 5 = 60 and 2*3*4 = 24", "3 * 4 * 5 = 60 and 2*3*4 = 24"),  # products stay
])
def test_strip_emphasis(text, plain):
    assert strip_emphasis(text) == plain


def test_answer_passages_put_the_text_after_the_think_block_first():
    assert answer_passages("<think>a</think>b") == ["b", " a "]
    assert answer_passages("a</think>b") == ["b", "a "]  # the template opened the block
    assert answer_passages("<think>x</think>y<thinking>z</thinking>w") == ["w", " x y z "]
    assert answer_passages("<think>cut off") == []
    assert answer_passages("no block") == ["no block"]


THOUGHT = "<think>\nMay is 24, so 48 + 24 = 72. So the answer is 72.\n</think>\n\n"


@pytest.mark.parametrize("after, think, kept", [
    ("In all 48 + 24 = 72 clips.\n\n\\boxed{72}", "keep",
     "<think>\nMay is 24, so 48 + 24 = 72. So the answer is 72.\n</think>\n\nIn all 48 + 24 = 72 clips."),
    ("In all 48 + 24 = 72 clips.\n\n\\boxed{72}", "unwrap",
     "May is 24, so 48 + 24 = 72. So the answer is 72.\n\nIn all 48 + 24 = 72 clips."),
    ("In all 48 + 24 = 72 clips.\n\n\\boxed{72}", "strip", "In all 48 + 24 = 72 clips."),
    ("\\boxed{72}", "keep", "<think>\nMay is 24, so 48 + 24 = 72. So the answer is 72.\n</think>"),
    ("\\boxed{72}", "unwrap", "May is 24, so 48 + 24 = 72."),
    ("\\boxed{72}", "strip", ""),
])
def test_training_rationale_by_think_mode(after, think, kept):
    assert training_rationale(THOUGHT + after, think) == kept


def test_training_rationale_without_a_think_block_is_the_same_in_every_mode():
    text = "12 + 20 = 32.\nTherefore, the answer is 32."
    assert {training_rationale(text, think) for think in ("keep", "unwrap", "strip")} == {"12 + 20 = 32."}
    with pytest.raises(ValueError, match="think: expected one of keep, unwrap, strip"):
        training_rationale(text, "drop")


@pytest.mark.parametrize("text, stripped", [
    ("48 + 24 = 72.\n\n**Final Answer**\n\\[\n\\boxed{72}\n\\]", "48 + 24 = 72."),
    ("48 + 24 = 72.\nThe final answer is $\\boxed{72}$.", "48 + 24 = 72."),
    ("48 + 24 = 72.\n$$\\boxed{72}$$", "48 + 24 = 72."),
    ("48+24 = <<48+24=72>>72 clips.\n#### 72", "48+24 = <<48+24=72>>72 clips."),
    ("Cold keeps milk fresh.\n\n**Answer: (B)**", "Cold keeps milk fresh."),
    ("Only one is cold.\nThe correct option is (B).", "Only one is cold."),
    ("Fish need water.\n\n**No**", "Fish need water."),
    ("It is 60.\n\nThe answer is:\n\n60", "It is 60."),
    ("She sold 72.\nAnd the correct answer is that she sold 72.", "She sold 72."),
    # a boxed answer inside a sentence of reasoning stays
    ("So each part is $\\boxed{5}$ m long.", "So each part is $\\boxed{5}$ m long."),
    # numbered steps: only the last line may be a bare answer
    ("Steps:\n12\n20\n32", "Steps:\n12\n20"),
    ("\\boxed{72}", "\\boxed{72}"),  # nothing would remain: unchanged
])
def test_closing_answer_statements_are_stripped(text, stripped):
    assert strip_answer_sentence(text) == stripped


@pytest.mark.parametrize("entry", CORPUS, ids=[entry["id"] for entry in CORPUS])
def test_corpus_answers_are_read(entry):
    task = load_task_file(TASK_FILES[entry["task"]]) if entry["task"] in TASK_FILES else entry["task"]
    assert extract_answer(entry["rationale"], task, question=entry["question"]) == entry["extracted"]


def run_prepare(tmp_path, entries, task, *options):
    """Each entry as a question of its own through `mcckd prepare --k 1`: (kept rationales by
    id, dropped rows by id)."""
    source, out, dropped = (tmp_path / f"{task}{suffix}.jsonl" for suffix in ("", "-out", "-dropped"))
    source.write_text("".join(
        json.dumps({key: entry[key] for key in ("id", "task", "question", "answer")}
                   | {"rationales": [entry["rationale"]]}) + "\n"
        for entry in entries))
    definition = load_task_file(TASK_FILES[task]) if task in TASK_FILES else task
    task_option = ["--task-file", str(TASK_FILES[task])] if task in TASK_FILES else ["--task", task]
    assert main(["prepare", str(source), *task_option, "--k", "1", "--out", str(out),
                 "--dropped", str(dropped), *options]) == 0
    kept = {record.id: record.rationales for record in read_records(out, definition)}
    rows = [json.loads(line) for line in dropped.read_text().splitlines()]
    return kept, {row["id"]: row for row in rows}


def report_count(report, reason):
    """The count printed beside `reason` in prepare's report."""
    return int(report.split(f"  {reason}")[1].split()[0])


@pytest.mark.parametrize("task", sorted({entry["task"] for entry in CORPUS}))
def test_prepare_classifies_every_corpus_output(tmp_path, capsys, task):
    entries = [entry for entry in CORPUS if entry["task"] == task]
    kept, dropped = run_prepare(tmp_path, entries, task)
    for entry in entries:
        if entry["expected"] == "kept":
            assert kept.get(entry["id"]) == [entry["kept"]] and entry["id"] not in dropped, entry["id"]
        else:
            assert entry["id"] not in kept, entry["id"]
            row = dropped[entry["id"]]
            assert (row["reason"], row["extracted"]) == (entry["expected"], entry["extracted"]), entry["id"]
            assert row["rationale"] == 0 and row["text"] == entry["rationale"], entry["id"]
    report = capsys.readouterr().out
    counts = Counter(entry["expected"] for entry in entries)
    for reason in ("no answer found", "wrong answer"):
        assert report_count(report, reason) == counts[reason]


def test_prepare_think_strip_keeps_what_follows_the_block(tmp_path, capsys):
    entries = [entry for entry in CORPUS if entry["task"] == "gsm8k" and "</think>" in entry["rationale"]]
    kept, dropped = run_prepare(tmp_path, entries, "gsm8k", "--think", "strip")
    assert kept["gsm-think-after-wins"] == ["April: 48 clips. May: 48 / 2 = 24 clips. Total: 48 + 24 = 72."]
    assert kept["gsm-think-right-after-wrong-inside"] == ["In May she sold 24 clips, so 48 + 24 = 72 in all."]
    # the answer is inside the block only: correct, but nothing is left to train on
    assert dropped["gsm-think-answer-inside-only"]["reason"] == "empty rationale"
    assert dropped["gsm-think-answer-inside-only"]["extracted"] == "72"
    assert dropped["gsm-think-wrong-after"]["reason"] == "wrong answer"
    assert report_count(capsys.readouterr().out, "empty rationale") == 1


def test_prepare_think_unwrap_drops_the_tags(tmp_path):
    entries = [entry for entry in CORPUS if entry["id"] == "gsm-think-right-after-wrong-inside"]
    kept, _ = run_prepare(tmp_path, entries, "gsm8k", "--think", "unwrap")
    assert kept["gsm-think-right-after-wrong-inside"] == [
        "Maybe 48 + 48 = 96? So the answer is 96. Wait, May is half of April, 24, which gives 72.\n\n"
        "In May she sold 24 clips, so 48 + 24 = 72 in all."]


def test_dropped_sidecar_names_duplicates_and_the_rationale_they_repeat(tmp_path):
    source, out, dropped = tmp_path / "t.jsonl", tmp_path / "out.jsonl", tmp_path / "dropped.jsonl"
    rationales = ["48 + 24 = 72.\n#### 72", "So 48 + 48 = 96.\n#### 96", "48 + 24 = 72.\n\\boxed{72}",
                  "May is 24 and April is 48: 72 in all.", "Half of 48 is 24; 24 + 48 = 72 clips."]
    source.write_text(json.dumps({"id": "nat", "question": "How many clips?", "answer": 72,
                                  "rationales": rationales}))
    assert main(["prepare", str(source), "--task", "gsm8k", "--k", "1", "--out", str(out),
                 "--dropped", str(dropped)]) == 0
    rows = [json.loads(line) for line in dropped.read_text().splitlines()]
    assert [(row["rationale"], row["reason"], row["extracted"], row.get("duplicate_of")) for row in rows] == [
        (1, "wrong answer", "96", None), (2, "exact duplicate", "72", 0), (3, "not chosen", "72", None),
        (4, "not chosen", "72", None)]
    assert all(row["id"] == "nat" and row["gold"] == "72" and row["text"] == rationales[row["rationale"]]
               for row in rows)
