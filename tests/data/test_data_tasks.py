"""Tasks of one's own: definitions and their errors, records, the config keys, the commands, and
a ten-choice task end to end (prepare -> train -> eval)."""
import json
from pathlib import Path

import pytest
import yaml

from mcckd.cli import main
from mcckd.data import Record, Task, load_task_file, read_records, resolve_task
from mcckd.data.tasks import BUILTIN_TASKS, task_from_mapping
from mcckd.errors import InputError
from mcckd.teacher.generate import DEFAULT_PROMPT, build_prompt
from mcckd.training.checkpoint import latest_checkpoint
from mcckd.training.config import load_config

HERE = Path(__file__).parent
TEN_CHOICES_FILE = HERE / "tasks" / "mmlu-pro.yaml"
CAPITAL_FILE = HERE / "tasks" / "capital.yaml"


def test_a_mapping_defines_a_task():
    task = task_from_mapping({"name": "aqua", "kind": "choice", "choices": "A-J"}, "here")
    assert task == Task("aqua", "choice", choices="ABCDEFGHIJ")
    for choices, letters in ((["A", "B", "D"], "ABD"), ("ABCD", "ABCD"), ("C-F", "CDEF")):
        mapping = {"name": "x", "kind": "choice", "choices": choices}
        assert task_from_mapping(mapping, "here").choices == letters
    city = task_from_mapping({"name": "city", "kind": "string", "normalize": ["lowercase"], "units": "km"},
                             "here")
    assert (city.normalize, city.units, city.answer_kind) == (("lowercase",), ("km",), "the answer")
    assert load_task_file(CAPITAL_FILE).answer_kind == "the name of the city"


def test_built_in_tasks_are_tasks_of_the_same_mechanism():
    assert {name: (task.kind, task.choices if task.kind == "choice" else None)
            for name, task in BUILTIN_TASKS.items()} == {
        "gsm8k": ("numeric", None), "svamp": ("numeric", None), "asdiv": ("numeric", None),
        "csqa": ("choice", "ABCDE"), "strategyqa": ("yesno", None)}
    assert resolve_task("csqa") is BUILTIN_TASKS["csqa"]
    assert resolve_task(str(TEN_CHOICES_FILE)).choices == "ABCDEFGHIJ"  # a task file's path
    assert resolve_task({"name": "t", "kind": "yesno"}) == Task("t", "yesno")


@pytest.mark.parametrize("mapping, message", [
    ([1, 2], "a task must be a mapping"),
    ({"name": "t", "kind": "choice", "letters": "A-J"}, "unknown task key 'letters'"),
    ({"kind": "choice"}, "'name' must be a word"),
    ({"name": "my task", "kind": "choice"}, "'name' must be a word"),
    ({"name": "csqa", "kind": "choice"}, "'name' 'csqa' is a built-in task"),
    ({"name": "t", "kind": "letters"}, "'kind' must be one of numeric, choice, yesno, string, regex"),
    ({"name": "t", "kind": "choice", "choices": "J-A"}, "'choices' must be two or more distinct capital"),
    ({"name": "t", "kind": "choice", "choices": "AAB"}, "'choices' must be two or more distinct capital"),
    ({"name": "t", "kind": "choice", "choices": "a-j"}, "'choices' must be two or more distinct capital"),
    ({"name": "t", "kind": "numeric", "choices": "A-J"}, "numeric tasks take no 'choices'"),
    ({"name": "t", "kind": "numeric", "normalize": ["lowercase"]}, "numeric tasks take no 'normalize'"),
    ({"name": "t", "kind": "regex"}, "a regex task needs a 'pattern'"),
    ({"name": "t", "kind": "regex", "pattern": "x("}, "'pattern' is not a valid regular expression"),
    ({"name": "t", "kind": "regex", "pattern": r"\d+"}, "'pattern' needs a capture group"),
    ({"name": "t", "kind": "string", "normalize": ["upper"]}, "'normalize': unknown rule 'upper'"),
    ({"name": "t", "kind": "string", "units": [3]}, "'units' must be a list of non-empty strings"),
    ({"name": "t", "kind": "string", "description": ""}, "'description' must be a non-empty string"),
])
def test_task_errors_name_where_and_the_key(mapping, message):
    with pytest.raises(InputError, match="^task.yaml: " + message.replace("(", r"\(")):
        task_from_mapping(mapping, "task.yaml")


def test_task_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=f"^{tmp_path / 'absent.yaml'}: cannot read the task file"):
        load_task_file(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match=f"^{bad}: the task file is not valid YAML"):
        load_task_file(bad)
    bad.write_text("name: t\nkind: yes-or-no\n")
    with pytest.raises(InputError, match=f"^{bad}: 'kind' must be one of"):
        load_task_file(bad)
    with pytest.raises(InputError, match="unknown task 'math'"):
        resolve_task("math")


def test_records_of_a_task_of_ones_own_need_its_definition(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"id": "q", "task": "mmlu-pro", "question": "Which?", "answer": "h",
                                "rationales": ["The answer is (H)."]}) + "\n")
    task = load_task_file(TEN_CHOICES_FILE)
    assert read_records(path, task) == [Record("q", "mmlu-pro", "Which?", "H", ["The answer is (H)."])]
    with pytest.raises(InputError, match=rf"^{path}:1: unknown task 'mmlu-pro': .*--task-file"):
        read_records(path)
    with pytest.raises(InputError, match=rf"^{path}:1: the record's task is 'mmlu-pro', expected 'csqa'"):
        read_records(path, "csqa")
    path.write_text(json.dumps({"instruction": "Which?", "output": [], "label": "K"}) + "\n")
    with pytest.raises(InputError, match=rf"^{path}:1: answer 'K' is not a valid mmlu-pro answer"):
        read_records(path, task)


def config_file(tmp_path, data_task, eval_task=None):
    tree = {"model": {"config": {"model_type": "llama"}}, "data": {"train": "train.jsonl", "task": data_task}}
    if eval_task is not None:
        tree["eval"] = {"task": eval_task}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_config_task_keys_take_a_name_a_mapping_or_a_file(tmp_path):
    mapping = {"name": "mmlu-pro", "kind": "choice", "choices": "A-J"}
    assert load_config(config_file(tmp_path, mapping)).data.task == mapping
    assert load_config(config_file(tmp_path, "csqa")).data.task == "csqa"
    config = load_config(config_file(tmp_path, str(TEN_CHOICES_FILE), {"name": "city", "kind": "string"}))
    assert resolve_task(config.data.task).choices == "ABCDEFGHIJ"
    assert resolve_task(config.eval.task).name == "city"
    override = "data.task={name: t, kind: choice, choices: A-F}"
    overridden = load_config(config_file(tmp_path, "csqa"), [override])
    assert resolve_task(overridden.data.task).choices == "ABCDEF"


@pytest.mark.parametrize("task, eval_task, message", [
    ("math", None, "config key 'data.task': unknown task 'math'"),
    ({"name": "t", "kind": "choice", "choices": "Z"}, None, "config key 'data.task': 'choices' must be"),
    ("csqa", {"name": "t", "kind": "regex"}, "config key 'eval.task': a regex task needs a 'pattern'"),
    (["csqa"], None, "config key 'data.task' must be a string or a mapping"),
])
def test_config_task_errors_name_the_key(tmp_path, task, eval_task, message):
    path = config_file(tmp_path, task, eval_task)
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(")):
        load_config(path)


def test_prepare_with_a_string_task_file(tmp_path, capsys):
    source, out = tmp_path / "teacher.json", tmp_path / "out.jsonl"
    source.write_text(json.dumps([{"instruction": "What is the capital of France?", "label": "Paris",
                                   "output": ["Its largest city.\n\n**Answer:** The Paris.",
                                              "The answer is Lyon.", "\\boxed{\\text{PARIS}}"]}]))
    assert main(["prepare", str(source), "--task-file", str(CAPITAL_FILE), "--k", "4",
                 "--out", str(out)]) == 0
    (record,) = read_records(out, load_task_file(CAPITAL_FILE))
    assert (record.id, record.task, record.answer) == ("capital-0", "capital", "paris")
    assert record.rationales == ["Its largest city.", "\\boxed{\\text{PARIS}}"]  # the second: all answer
    assert capsys.readouterr().out.split("  wrong answer")[1].split()[0] == "1"


def test_commands_take_a_task_name_or_a_task_file_not_both(tmp_path, capsys):
    argv = ["prepare", "in.jsonl", "--k", "1", "--out", str(tmp_path / "o.jsonl")]
    for options in ([], ["--task", "csqa", "--task-file", str(CAPITAL_FILE)]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv + options)
        assert exit_info.value.code == 2
    assert "one of the arguments --task --task-file is required" in capsys.readouterr().err
    assert main(argv + ["--task-file", str(tmp_path / "absent.yaml")]) == 2
    assert f"mcckd: error: {tmp_path / 'absent.yaml'}: cannot read the task file" in capsys.readouterr().err


def test_the_teacher_prompt_names_the_answer_of_the_task():
    capital = load_task_file(CAPITAL_FILE)
    assert "where X is the name of the city." in build_prompt(DEFAULT_PROMPT, "Q?", capital)
    ten_choices = load_task_file(TEN_CHOICES_FILE)
    assert "where X is the letter of the correct choice." in build_prompt(DEFAULT_PROMPT, "Q?", ten_choices)
    assert "where X is a number." in build_prompt(DEFAULT_PROMPT, "Q?", "gsm8k")


# Ten-choice questions whose answers lie beyond E, where csqa's letters end:
# (what is asked, the ten options, the letter of the right one, a reason).
TEN_CHOICE_QUESTIONS = [
    ("Which one is a fruit?", "ox sky pen cup hat apple map key bus ink", "F", "apple"),
    ("What can fly?", "rock salt milk door bed rug sock lid bird cake", "I", "bird"),
    ("Which is a color?", "dog tea car box fan pot leg egg bell green", "J", "green"),
]


def ten_choice_question(asked, options):
    """The question with its options listed as (A) ... (J)."""
    listed = " ".join(f"({letter}) {option}" for letter, option in zip("ABCDEFGHIJ", options.split()))
    return f"{asked} {listed}"


def teacher_outputs(letter, right):
    """A reasoning teacher's outputs: two right, one wrong, one cut off."""
    return [f"<think>\nIs it {right}? Yes.\n</think>\nOnly {right} fits.\n\n\\boxed{{{letter}}}",
            f"It is {right}. The correct option is ({letter}).",
            "**Answer: (B)**",
            "<think>\nLet me look at each option in turn"]


def test_a_ten_choice_task_end_to_end(tmp_path, capsys):
    names = ("teacher.jsonl", "train.jsonl", "dropped.jsonl")
    teacher, train_path, dropped = (tmp_path / name for name in names)
    questions = [ten_choice_question(asked, options) for asked, options, _, _ in TEN_CHOICE_QUESTIONS]
    teacher.write_text("".join(
        json.dumps({"id": f"q{i}", "task": "mmlu-pro", "question": question, "answer": letter,
                    "rationales": teacher_outputs(letter, right)}) + "\n"
        for i, (question, (_, _, letter, right)) in enumerate(zip(questions, TEN_CHOICE_QUESTIONS))))
    assert main(["prepare", str(teacher), "--task-file", str(TEN_CHOICES_FILE), "--k", "2",
                 "--think", "strip", "--out", str(train_path), "--dropped", str(dropped)]) == 0
    records = read_records(train_path, load_task_file(TEN_CHOICES_FILE))
    assert [(r.answer, len(r.rationales)) for r in records] == [("F", 2), ("I", 2), ("J", 2)]
    assert records[0].rationales == ["Only apple fits.", "It is apple."]
    rows = [json.loads(line) for line in dropped.read_text().splitlines()]
    assert [(row["rationale"], row["reason"], row["extracted"]) for row in rows] == [
        (2, "wrong answer", "B"), (3, "no answer found", None)] * 3

    # The evaluation set: the same questions, the last one's gold changed, so one answer is wrong.
    eval_path = tmp_path / "eval.json"
    golds = ["F", "I", "A"]
    eval_path.write_text(json.dumps([{"instruction": question, "output": "", "label": gold}
                                     for question, gold in zip(questions, golds)]))
    steps = 100
    run = tmp_path / "run"
    config = {
        "model": {"config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "max_position_embeddings": 256},
                  "tokenizer_vocab_size": 400, "attn_backend": "sdpa"},
        "data": {"train": str(train_path), "task": {"name": "mmlu-pro", "kind": "choice", "choices": "A-J"},
                 "num_rationales": 2, "max_length": 128, "max_tokens": 512},
        "train": {"out_dir": str(run), "device": "cpu", "lr": 1e-2, "min_lr_ratio": 0.5, "max_steps": steps,
                  "log_every": 10,
                  "save_every": 0, "tensorboard": False, "progress_bar": False},
        "eval": {"data": str(eval_path), "every": steps, "max_new_tokens": 40},
    }
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(config_path)]) == 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (periodic,) = [m for m in logged if "eval_accuracy" in m]
    assert (periodic["eval_n"], periodic["eval_correct"]) == (3, 2)

    out = tmp_path / "eval"
    argv = ["eval", "--model", str(latest_checkpoint(run)), "--data", str(eval_path), "--out", str(out),
            "--max-new-tokens", "40", "--device", "cpu"]
    assert main([*argv, "--task-file", str(TEN_CHOICES_FILE)]) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["extracted"] for row in predictions] == ["F", "I", "J"]
    assert [row["gold"] for row in predictions] == golds
    assert [row["correct"] for row in predictions] == [True, True, False]
    assert all(row["generated"].rstrip().endswith(f"Therefore, the answer is {row['extracted']}.")
               for row in predictions)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["task"], summary["n"], summary["correct"], summary["missing"]) == ("mmlu-pro", 3, 2, 0)
    # csqa's letters end at E: its rules refuse these gold answers, naming the line
    capsys.readouterr()
    assert main([*argv, "--task", "csqa"]) == 2
    assert f"mcckd: error: {eval_path}:1: answer 'F' is not a valid csqa answer" in capsys.readouterr().err
