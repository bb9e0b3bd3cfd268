"""`mcckd eval` answers from the prompt the student was trained on: the run's prompt format
(a chat template, a custom plain prompt), or the options' when they are given."""
import json
from dataclasses import replace

import pytest
import yaml
from helpers import chat_tokenizer, memorise, tiny_llama

from mcckd.cli import main
from mcckd.data import PromptFormat, Record, tokenize_record, write_records
from mcckd.evaluation import scoring
from mcckd.evaluation.prompting import eval_prompt_format, run_config_path
from mcckd.training.config import load_config
from mcckd.training.loop import train

CASES = [
    ("What is 3 plus 4?", "7", "3 plus 4 is 7."),
    ("What is 10 minus 2?", "8", "10 minus 2 is 8."),
    ("How many legs has a cat?", "4", "A cat has four legs."),
]
CHAT = PromptFormat("chat", system="Answer briefly.")


def case_records():
    return [Record(f"svamp-{i}", "svamp", question, gold, [taught])
            for i, (question, gold, taught) in enumerate(CASES)]


def chat_prompt(tokenizer, question):
    """The oracle: the template's own prompt with the system message, from transformers."""
    messages = [{"role": "system", "content": CHAT.system}, {"role": "user", "content": question}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A run folder whose checkpoint memorised CASES in the chat format; its config.yaml says
    so. (run folder, tokenizer, data file)."""
    run = tmp_path_factory.mktemp("run")
    records = case_records()
    tokenizer = chat_tokenizer("chatml", [f"{q} {t} Therefore, the answer is {a}." for q, a, t in CASES])
    model = tiny_llama(tokenizer)
    sequences = []
    for record in records:
        rationale = tokenize_record(record, tokenizer, prompt_format=CHAT)[0].rationales[0]
        sequences.append((rationale.input_ids, rationale.target_start))
    assert memorise(model, sequences, tokenizer.pad_token_id) < 0.01
    checkpoint = run / "checkpoints" / "step-000001"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    data = {"train": "train.jsonl", "format": "chat", "system": CHAT.system}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    path = run / "test.jsonl"
    write_records(path, [replace(record, rationales=[]) for record in records])
    return run, tokenizer, path


def evaluate(checkpoint, data, out, *options):
    argv = ["eval", "--model", str(checkpoint), "--data", str(data), "--task", "svamp", "--out", str(out),
            "--max-new-tokens", "30", "--device", "cpu", *options]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def test_eval_answers_in_the_runs_chat_format(chat_run, tmp_path, capsys):
    run, _, data = chat_run
    rows, summary = evaluate(run / "checkpoints" / "step-000001", data, tmp_path / "eval")
    # exactly the taught replies: the training prompt, and generation stopped at <|im_end|>
    assert [row["generated"] for row in rows] == [f"{t}\nTherefore, the answer is {a}." for _, a, t in CASES]
    assert summary["accuracy"] == 1.0 and summary["prompt_format"] == "chat"
    assert f"prompt format chat (from {run / 'config.yaml'})" in capsys.readouterr().err


def test_eval_prompts_are_the_training_prompts(chat_run, tmp_path, monkeypatch):
    run, tokenizer, data = chat_run
    seen = []

    def record_prompts(model, tokenizer, prompts, config, **options):
        seen.extend(prompts)
        yield list(range(len(prompts))), [["Therefore, the answer is 7."]] * len(prompts)

    monkeypatch.setattr(scoring, "generate_batches", record_prompts)
    evaluate(run / "checkpoints" / "step-000001", data, tmp_path / "eval")
    training = [tokenize_record(record, tokenizer, prompt_format=CHAT)[0].rationales[0]
                for record in case_records()]
    assert seen == [r.input_ids[:r.target_start] for r in training]
    assert seen == [chat_prompt(tokenizer, question) for question, _, _ in CASES]


def test_the_options_replace_the_runs_format(chat_run, tmp_path):
    run, tokenizer, data = chat_run
    checkpoint = run / "checkpoints" / "step-000001"
    rows, summary = evaluate(checkpoint, data, tmp_path / "eval", "--format", "plain")
    assert summary["prompt_format"] == "plain"
    assert summary["correct"] < len(CASES)  # a student taught in the chat format, asked in plain text


def test_where_the_format_comes_from(tmp_path):
    def options(**given):
        return type("Args", (), {"format": None, "system": None, "prompt_template": None, **given})

    checkpoint = tmp_path / "run" / "checkpoints" / "step-000010"
    checkpoint.mkdir(parents=True)
    assert run_config_path(checkpoint) is None
    assert eval_prompt_format(checkpoint, options())[0] == PromptFormat()
    (tmp_path / "run" / "config.yaml").write_text(
        yaml.safe_dump({"data": {"format": "plain", "prompt": "Q: {question}\nA:"}}))
    assert eval_prompt_format(checkpoint, options())[0] == PromptFormat(prompt="Q: {question}\nA:")
    (checkpoint / "config.yaml").write_text(yaml.safe_dump({"data": {"format": "chat"}}))  # its own
    own = checkpoint / "config.yaml"
    assert eval_prompt_format(checkpoint, options()) == (PromptFormat("chat"), str(own))
    given = options(format="chat", system="Be brief.")
    assert eval_prompt_format(checkpoint, given)[0] == PromptFormat("chat", system="Be brief.")


@pytest.mark.parametrize("options, message", [
    (["--system", "Be brief."], "--system is the system message of --format chat"),
    (["--prompt-template", "Q:"], "--prompt-template must hold the placeholder {question}"),
])
def test_bad_prompt_options_are_errors(chat_run, tmp_path, capsys, options, message):
    run, _, data = chat_run
    argv = ["eval", "--model", str(run / "checkpoints" / "step-000001"), "--data", str(data),
            "--task", "svamp", "--out", str(tmp_path / "eval"), "--device", "cpu", *options]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_train_then_eval_uses_the_same_chat_prompt(tmp_path, monkeypatch):
    """`mcckd train` with data.format: chat, then `mcckd eval` on its final checkpoint."""
    records = [Record(f"q{i}", "svamp", f"What is {i} plus 2?", str(i + 2),
                      [f"{i} plus 2 is {i + 2}.", f"Two more than {i} is {i + 2}."]) for i in range(4)]
    write_records(tmp_path / "train.jsonl", records)
    tokenizer = chat_tokenizer("llama3", [f"{r.question} {' '.join(r.rationales)}" for r in records], 300)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = load_config(None, [
        f"data.train={tmp_path / 'train.jsonl'}", "data.task=svamp", "data.num_rationales=2",
        "data.max_length=128", "data.max_tokens=512", "data.format=chat", "data.system=Be exact.",
        "model.config={model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
        "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 128}",
        f"model.tokenizer={tmp_path / 'tokenizer'}", "model.attn_backend=sdpa", "train.device=cpu",
        "train.max_steps=1", f"train.out_dir={tmp_path / 'run'}", "train.tensorboard=false",
        "train.progress_bar=false"])
    checkpoint = train(config)["checkpoint"]
    seen = []

    def record_prompts(model, tokenizer, prompts, config, **options):
        seen.extend(prompts)
        yield list(range(len(prompts))), [[""]] * len(prompts)

    monkeypatch.setattr(scoring, "generate_batches", record_prompts)
    evaluate(checkpoint, tmp_path / "train.jsonl", tmp_path / "eval")
    system = [{"role": "system", "content": "Be exact."}]
    assert seen == [list(tokenizer.apply_chat_template(system + [{"role": "user", "content": r.question}],
                                                       add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)) for r in records]
