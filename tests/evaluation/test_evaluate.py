"""mcckd eval: a tiny student that memorised its answers gives a known accuracy."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import memorise, tiny_llama
from transformers import T5Config, T5ForConditionalGeneration

from mcckd.cli import main
from mcckd.data import Record, tokenize_record
from mcckd.data.prompts import encode
from mcckd.data.tokenize import encode_prompt
from mcckd.evaluation.generation import generate_greedy
from mcckd.evaluation.report import markdown_table
from mcckd.evaluation.scoring import evaluate_model, predict
from mcckd.models.attention import attention_backend, set_attention_backend
from mcckd.models.loading import load_checkpoint
from mcckd.models.word_tokenizer import train_word_tokenizer
from mcckd.training.checkpoint import save_checkpoint

OFFICIAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "mcckd-official"

# (question, gold answer, what the student learns to say): three right, one wrong, one with no
# answer at all.
CASES = [
    ("What is 3 plus 4?", "7", "3 plus 4 is 7.", "7"),
    ("What is 10 minus 2?", "8", "10 minus 2 is 8.", "8"),
    ("How many legs has a cat?", "4", "A cat has four legs.", "4"),
    ("What is 6 times 7?", "42", "6 times 7 is 40.", "40"),
    ("How tall is the tree?", "5", None, None),
]
UNANSWERED = " I do not know."
EXPECTED_EXTRACTED = ["7", "8", "4", "40", None]
EXPECTED_CORRECT = [True, True, True, False, False]


def training_sequence(record, taught_rationale, taught_answer, tokenizer):
    """(token ids, first target position) the student memorises for one question, built by the
    data package."""
    if taught_rationale is None:
        tokenized = tokenize_record(replace(record, rationales=["-"]), tokenizer)[0].rationales[0]
        prompt = tokenized.input_ids[:tokenized.target_start]
        return prompt + encode(tokenizer, UNANSWERED) + [tokenizer.eos_token_id], len(prompt)
    taught = replace(record, answer=taught_answer, rationales=[taught_rationale])
    tokenized = tokenize_record(taught, tokenizer)[0].rationales[0]
    return tokenized.input_ids, tokenized.target_start


@pytest.fixture(scope="module")
def memorised():
    """(model, tokenizer, records, expected generations) of a student that learnt CASES."""
    records = [
        Record(f"svamp-{i}", "svamp", question, gold, []) for i, (question, gold, _, _) in enumerate(CASES)
    ]
    texts = [
        f"Question: {q}\nAnswer: {r or UNANSWERED}\nTherefore, the answer is {a}." for q, _, r, a in CASES
    ]
    tokenizer = train_word_tokenizer(texts, vocab_size=320)
    model = tiny_llama(tokenizer)
    sequences = [training_sequence(record, rationale, answer, tokenizer)
                 for record, (_, _, rationale, answer) in zip(records, CASES)]
    assert memorise(model, sequences, tokenizer.pad_token_id) < 0.01
    expected = [f" {rationale}\nTherefore, the answer is {answer}." if rationale else UNANSWERED
                for _, _, rationale, answer in CASES]
    return model.eval(), tokenizer, records, expected


def write_paper_layout(path, records):
    """The records as the paper's test files hold them: instruction, empty output, label."""
    rows = [
        {"instruction": record.question + "\n", "output": "", "label": record.answer} for record in records
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")


def test_memorised_student_gets_the_expected_accuracy(memorised):
    model, tokenizer, records, _ = memorised
    summary = evaluate_model(model, tokenizer, records, "svamp", batch_size=4, max_new_tokens=40)
    assert summary == {"task": "svamp", "n": 5, "correct": 3, "accuracy": 0.6, "missing": 1}


def test_rows_hold_generation_extraction_and_verdict(memorised):
    model, tokenizer, records, expected = memorised
    rows = predict(model, tokenizer, records, "svamp", batch_size=5, max_new_tokens=40)
    assert [row["generated"] for row in rows] == expected
    assert [row["extracted"] for row in rows] == EXPECTED_EXTRACTED
    assert [row["correct"] for row in rows] == EXPECTED_CORRECT
    assert [row["gold"] for row in rows] == [gold for _, gold, _, _ in CASES]
    assert [row["id"] for row in rows] == [record.id for record in records]


def test_left_padding_leaves_outputs_unchanged(memorised):
    model, tokenizer, records, expected = memorised
    prompts = [
        encode_prompt(tokenizer, record.question, encoder_decoder=model.config.is_encoder_decoder)
        for record in records
    ]
    assert len({len(prompt) for prompt in prompts}) > 1  # batches really are padded
    for batch_size in (1, 2, 5):
        assert (
            generate_greedy(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=40) == expected
        )


def test_prompt_matches_the_training_prompt(memorised):
    model, tokenizer, records, _ = memorised
    tokenized = tokenize_record(Record("x", "svamp", records[0].question, "7", ["r"]), tokenizer)[
        0
    ].rationales[0]
    assert (
        encode_prompt(tokenizer, records[0].question, encoder_decoder=model.config.is_encoder_decoder)
        == tokenized.input_ids[: tokenized.target_start]
    )


def test_training_state_is_restored(memorised):
    """The training loop's model trains with a packed attention backend, which cannot decode."""
    model, tokenizer, records, _ = memorised
    implementation = model.config._attn_implementation
    model.train()
    set_attention_backend(model, "sdpa")
    try:
        summary = evaluate_model(model, tokenizer, records, "svamp", max_new_tokens=40)
        assert summary["correct"] == 3
        assert model.training
        assert attention_backend(model) == "sdpa"
    finally:
        model.eval()
        model.set_attn_implementation(implementation)


def test_max_new_tokens_cuts_the_answer_off(memorised):
    model, tokenizer, records, _ = memorised
    summary = evaluate_model(model, tokenizer, records[:1], "svamp", max_new_tokens=3)
    assert summary["correct"] == 0


def test_cli_writes_predictions_summary_and_table(memorised, tmp_path):
    model, tokenizer, records, expected = memorised
    checkpoint = tmp_path / "student"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    data = tmp_path / "test.json"
    write_paper_layout(data, records)
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(checkpoint), "--data", str(data), "--task", "svamp", "--out", str(out),
            "--batch-size", "2", "--max-new-tokens", "40", "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {key: summary[key] for key in ("task", "n", "correct", "accuracy", "missing")} == {
        "task": "svamp", "n": 5, "correct": 3, "accuracy": 0.6, "missing": 1}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["generated"] for row in rows] == expected
    assert [row["correct"] for row in rows] == EXPECTED_CORRECT
    assert [row["question"] for row in rows] == [record.question for record in records]
    table = (out / "summary.md").read_text()
    assert "| svamp |" in table and "| 5 | 3 | 60.00% | 1 |" in table
    assert table.strip() == markdown_table(summary)


@pytest.mark.parametrize("base_location", ["subfolder", "adapter_config"])
def test_lora_checkpoint_loads_onto_its_base(memorised, tmp_path, base_location):
    from peft import LoraConfig, get_peft_model

    model, tokenizer, records, _ = memorised
    base = tmp_path / "base"
    model.save_pretrained(base)
    copy = tiny_llama(tokenizer)
    copy.load_state_dict(model.state_dict())  # get_peft_model changes the model it wraps
    lora = get_peft_model(copy, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, weight in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.5)  # an adapter that changes the outputs
    if base_location == "subfolder":  # as the training loop saves a LoRA run on a random base
        checkpoint = save_checkpoint(tmp_path / "run", 1, model=lora, state_dict=lora.state_dict(),
                                     tokenizer=tokenizer, training_state={"step": 1}, optimizer_state={},
                                     base_folder=base)
    else:
        checkpoint = tmp_path / "student"
        lora.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        config = json.loads((checkpoint / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(base)
        (checkpoint / "adapter_config.json").write_text(json.dumps(config))

    loaded, loaded_tokenizer = load_checkpoint(checkpoint)
    input_ids = torch.tensor(
        [encode_prompt(tokenizer, records[0].question, encoder_decoder=model.config.is_encoder_decoder)]
    )
    with torch.no_grad():
        expected, plain, got = (m.eval()(input_ids).logits for m in (lora, model, loaded))
    assert not torch.allclose(expected, plain, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_encoder_decoder_student_batches_like_single_questions(memorised):
    _, tokenizer, records, _ = memorised
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )).eval()
    prompts = [
        encode_prompt(tokenizer, record.question, encoder_decoder=model.config.is_encoder_decoder)
        for record in records
    ]
    singles = generate_greedy(model, tokenizer, prompts, batch_size=1, max_new_tokens=6)
    assert generate_greedy(model, tokenizer, prompts, batch_size=5, max_new_tokens=6) == singles
    rows = predict(model, tokenizer, records, "svamp", max_new_tokens=6)
    assert [row["generated"] for row in rows] == singles


def test_cli_rejects_a_folder_without_a_checkpoint(tmp_path, capsys, memorised):
    data = tmp_path / "test.json"
    write_paper_layout(data, memorised[2])
    argv = [
        "eval",
        "--model",
        str(tmp_path),
        "--data",
        str(data),
        "--task",
        "svamp",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="../shared/data is not here")
def test_paper_test_file_is_read_with_its_labels(tmp_path):
    path = OFFICIAL / "SVAMP" / "test.json"
    raw = json.loads(path.read_text())
    tokenizer = train_word_tokenizer([row["instruction"] for row in raw], vocab_size=400)
    checkpoint = tmp_path / "student"
    tiny_llama(tokenizer).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(checkpoint), "--data", str(path), "--task", "svamp", "--out", str(out),
            "--batch-size", "64", "--max-new-tokens", "4", "--device", "cpu"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["gold"] for row in rows] == [row["label"] for row in raw]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == len(raw) == 150
    assert summary["accuracy"] == sum(row["correct"] for row in rows) / 150
    assert summary["missing"] == sum(row["extracted"] is None for row in rows)
