"""`mcckd generate --local`: the prompt as a chat turn (with a system message) or as plain text;
inputs in any format the data package reads."""
import json

import pandas as pd
import pytest
from helpers import chat_tokenizer, tiny_llama

from mcckd.cli import main
from mcckd.errors import InputError
from mcckd.evaluation import generation
from mcckd.teacher.generate import local_prompt_ids

QUESTION = "What is 2 plus 3?"


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer("chatml", [QUESTION, "Be brief."], vocab_size=300)


def test_chat_plain_and_auto_prompts(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    expected = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))
    assert local_prompt_ids(tokenizer, QUESTION, "chat", "Be brief.") == expected
    assert local_prompt_ids(tokenizer, QUESTION, "auto", "Be brief.") == expected
    assert tokenizer.decode(local_prompt_ids(tokenizer, QUESTION, "plain")) == QUESTION
    assert "You are a helpful assistant." in tokenizer.decode(local_prompt_ids(tokenizer, QUESTION, "chat"))


def test_what_the_prompt_options_refuse(tokenizer):
    with pytest.raises(InputError, match="--system is a message of the chat format"):
        local_prompt_ids(tokenizer, QUESTION, "plain", "Be brief.")
    bare = chat_tokenizer("chatml", [QUESTION], vocab_size=300)
    bare.chat_template = None
    with pytest.raises(InputError, match="needs a tokenizer with a chat template"):
        local_prompt_ids(bare, QUESTION, "chat")
    assert bare.decode(local_prompt_ids(bare, QUESTION, "auto")) == QUESTION


def test_generate_local_reads_a_csv_and_sends_the_chat_prompt(tokenizer, tmp_path, monkeypatch):
    teacher = tmp_path / "teacher"
    tiny_llama(tokenizer).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    pd.DataFrame([{"problem": QUESTION, "gold": "5"}]).to_csv(tmp_path / "questions.csv", index=False)
    seen = []

    def answer(model, tokenizer, prompts, config, *, batch_size):
        seen.extend(prompts)
        yield list(range(len(prompts))), [["2 plus 3 is 5."] * config.num_return_sequences] * len(prompts)

    monkeypatch.setattr(generation, "generate_batches", answer)
    out = tmp_path / "rationales.jsonl"
    argv = ["generate", str(tmp_path / "questions.csv"), "--local", str(teacher), "--num-samples", "2",
            "--temperature", "1.0", "--task", "svamp", "--out", str(out), "--device", "cpu",
            "--question-field", "problem", "--answer-field", "gold",
            "--format", "chat", "--system", "Be brief."]
    assert main(argv) == 0
    (prompt,) = seen
    text = tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAnswer the question")
    assert text.endswith(f"Question: {QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["id"], record["answer"], record["rationales"]) == ("svamp-0", "5", ["2 plus 3 is 5."] * 2)


def test_prompt_options_are_refused_with_a_server(tmp_path, capsys):
    pd.DataFrame([{"question": QUESTION, "answer": "5"}]).to_parquet(tmp_path / "questions.parquet")
    argv = ["generate", str(tmp_path / "questions.parquet"), "--endpoint", "http://127.0.0.1:9/v1",
            "--model", "teacher", "--num-samples", "1", "--temperature", "0", "--task", "svamp",
            "--out", str(tmp_path / "out.jsonl"), "--system", "Be brief."]
    assert main(argv) == 2
    assert "--format and --system shape a --local model's prompt" in capsys.readouterr().err
