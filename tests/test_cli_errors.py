"""Every command on bad input: exit code 2 and one line `mcckd: error: ...` that names the file
and line, the option or the config key; never a Python traceback. Every case is refused before
any model is loaded or any request sent."""
import pytest

from mcckd import cli

GOOD = '{"id": "q0", "question": "1+1?", "answer": "2", "rationales": ["1 and 1 make 2. The answer is 2."]}\n'
FILES = {
    "good.jsonl": GOOD,
    "broken.jsonl": GOOD + '{"id": \n',
    "empty.jsonl": "",
    "blank.jsonl": "\n  \n",
    "no-rationales.jsonl": '{"id": "q0", "question": "1+1?", "answer": "2"}\n',
    "repeated-id.jsonl": GOOD + GOOD,
    "task.yaml": "name: mine\nkind: nope\n",
    "run.yaml": "train:\n  learning_rate: 1\n",
    "a-file": "",
}
PREPARE = ["prepare", "--task", "svamp", "--k", "2", "--out", "{tmp}/out.jsonl"]
GENERATE = ["generate", "--task", "svamp", "--out", "{tmp}/teacher.jsonl", "--num-samples", "2",
            "--temperature", "0.7"]
EVAL = ["eval", "--task", "svamp", "--data", "{tmp}/good.jsonl"]

CASES = {
    "prepare: a missing input": (PREPARE + ["{tmp}/missing.jsonl"], "{tmp}/missing.jsonl: cannot read"),
    "prepare: a broken JSON line": (PREPARE + ["{tmp}/broken.jsonl"], "{tmp}/broken.jsonl:2: invalid JSON"),
    "prepare: an empty input": (PREPARE + ["{tmp}/empty.jsonl"], "{tmp}/empty.jsonl: no records"),
    "prepare: a blank input": (PREPARE + ["{tmp}/blank.jsonl"], "{tmp}/blank.jsonl: no records"),
    "prepare: a record without rationales": (PREPARE + ["{tmp}/no-rationales.jsonl"],
                                             "{tmp}/no-rationales.jsonl:1: the record has no rationales"),
    "prepare: a repeated id": (PREPARE + ["{tmp}/repeated-id.jsonl"],
                               "{tmp}/repeated-id.jsonl:2: the id 'q0' is already used"),
    "prepare: invalid UTF-8": (PREPARE + ["{tmp}/bad-utf8.jsonl"], "{tmp}/bad-utf8.jsonl:2: not valid UTF-8"),
    "prepare: a bad task file": (["prepare", "--task-file", "{tmp}/task.yaml", "--k", "2", "--out",
                                  "{tmp}/out.jsonl", "{tmp}/good.jsonl"], "{tmp}/task.yaml: 'kind' must be"),
    "generate: a broken JSON line": (GENERATE + ["--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
                                                 "{tmp}/broken.jsonl"], "{tmp}/broken.jsonl:2: invalid JSON"),
    "generate: a repeated id": (GENERATE + ["--local", "{tmp}/no-model", "{tmp}/repeated-id.jsonl"],
                                "{tmp}/repeated-id.jsonl:2: the id 'q0' is already used at "
                                "{tmp}/repeated-id.jsonl:1"),
    "generate: a missing local model": (GENERATE + ["--local", "{tmp}/no-model", "{tmp}/good.jsonl"],
                                        "{tmp}/no-model: not a checkpoint folder"),
    "generate: a server without --model": (GENERATE + ["--endpoint", "http://127.0.0.1:9/v1",
                                                       "{tmp}/good.jsonl"], "--endpoint needs --model"),
    "train: a missing config": (["train", "--config", "{tmp}/missing.yaml"],
                                "{tmp}/missing.yaml: cannot read"),
    "train: an unknown config key": (["train", "--config", "{tmp}/run.yaml"],
                                     "unknown config key 'train.learning_rate'"),
    "eval: a missing checkpoint": (EVAL + ["--model", "{tmp}/no-model", "--out", "{tmp}/eval"],
                                   "{tmp}/no-model: not a checkpoint folder"),
    "eval: --out is a file": (EVAL + ["--model", "{tmp}/no-model", "--out", "{tmp}/a-file"],
                              "--out {tmp}/a-file: exists and is not a folder"),
    "eval: a repeated id": (["eval", "--task", "svamp", "--data", "{tmp}/repeated-id.jsonl", "--model",
                             "{tmp}/no-model", "--out", "{tmp}/eval"],
                            "{tmp}/repeated-id.jsonl:2: the id 'q0'"),
    "eval: a broken data line": (["eval", "--task", "svamp", "--data", "{tmp}/broken.jsonl", "--model",
                                  "{tmp}/no-model", "--out", "{tmp}/eval"],
                                 "{tmp}/broken.jsonl:2: invalid JSON"),
    "export: a missing checkpoint": (["export", "--out", "{tmp}/export", "{tmp}/no-model"],
                                     "{tmp}/no-model: not a checkpoint folder"),
    "export: --out is a file": (["export", "--out", "{tmp}/a-file", "{tmp}/no-model"],
                                "--out {tmp}/a-file: exists and is not a folder"),
    "demo: --out is a file": (["demo", "--out", "{tmp}/a-file"],
                              "{tmp}/a-file exists and is not an empty folder"),
}


@pytest.fixture
def inputs(tmp_path):
    """The files the cases name, in `tmp_path`."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "bad-utf8.jsonl").write_bytes(GOOD.encode() + b'{"id": "q1", "question": "\xff"}\n')
    return tmp_path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_naming_its_source(inputs, capsys, name):
    argv, expected = CASES[name]
    argv = [part.replace("{tmp}", str(inputs)) for part in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mcckd: error: ")]
    assert len(errors) == 1 and expected.replace("{tmp}", str(inputs)) in errors[0], err
    assert "Traceback" not in err
