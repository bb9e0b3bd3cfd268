"""`mcckd train` on bad input: one line `mcckd: error: ...` naming the key or the file and line,
exit code 2, never a Python traceback."""
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import settings

from mcckd import cli

BAD_LINE = '{"id": "q0", "question": "1+1?", "answer": "2", "rationales": ["1 and 1 make 2."]}\n{"id": \n'


def edit(path, value):
    """A function that sets the dotted key `path` of a config tree to `value`."""
    def apply(tree):
        *parents, last = path.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return apply


BAD_INPUTS = {
    "negative lr": (edit("train.lr", -0.001), "config key 'train.lr' must be > 0, got -0.001"),
    "keep_last -1": (edit("train.keep_last", -1), "config key 'train.keep_last' must be >= 0"),
    "heads not dividing the hidden size": (edit("model.config.num_attention_heads", 5),
                                           "'model.config.num_attention_heads'"),
    "key/value heads not dividing the heads": (edit("model.config.num_key_value_heads", 3),
                                               "config key 'model.config.num_key_value_heads'"),
    "unknown key": (edit("train.learning_rate", 1), "unknown config key 'train.learning_rate'"),
    "missing training data": (edit("data.train", "{tmp}/missing.jsonl"), "{tmp}/missing.jsonl"),
    "a broken line in the data": (edit("data.train", "{tmp}/broken.jsonl"), "{tmp}/broken.jsonl:2"),
    "out_dir is a file": (edit("train.out_dir", "{tmp}/broken.jsonl"), "config key 'train.out_dir'"),
    "no cuda": (edit("train.device", "cuda"), "config key 'train.device' is cuda"),
    "unavailable attention": (edit("model.attn_backend", "flash_attn"), "config key 'model.attn_backend'"),
    "missing tokenizer": (edit("model.tokenizer", "{tmp}/no-tokenizer"), "config key 'model.tokenizer'"),
    "LoRA on no module": (edit("model.lora", {"r": 2, "target_modules": ["nope"]}),
                          "config key 'model.lora.target_modules'"),
    "no student": (edit("model", {"name_or_path": "{tmp}"}), "config key 'model.name_or_path'"),
    "sequences too long for max_length": (edit("data.max_length", 8), "data.max_length=8"),
    "missing eval data": (edit("eval", {"data": "{tmp}/missing-eval.jsonl", "every": 1}),
                          "{tmp}/missing-eval.jsonl"),
}


def bad_config(records_path, tmp_path, change):
    tree = settings(records_path, tmp_path / "run", max_steps=1)
    change(tree)
    text = yaml.safe_dump(tree).replace("{tmp}", str(tmp_path))
    (tmp_path / "broken.jsonl").write_text(BAD_LINE, encoding="utf-8")
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_key_or_the_file(records_path, tmp_path, capsys, name):
    change, expected = BAD_INPUTS[name]
    if name == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    config = bad_config(records_path, tmp_path, change)
    assert cli.main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mcckd: error: ")]
    assert len(errors) == 1 and expected.replace("{tmp}", str(tmp_path)) in errors[0], err
    assert "Traceback" not in err


def test_the_command_line_prints_no_traceback(records_path, tmp_path):
    """The same through `python -m mcckd` in a process of its own (what a user's shell sees)."""
    config = bad_config(records_path, tmp_path, edit("train.keep_last", -1))
    result = subprocess.run([sys.executable, "-m", "mcckd", "train", "--config", str(config), "--resume"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "mcckd: error: config key 'train.keep_last' must be >= 0, got -1"
    both = subprocess.run([sys.executable, "-m", "mcckd", "train", "--config", str(config), "--resume",
                           "--auto-resume"], capture_output=True, text=True)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
