"""mcckd eval: a tiny student that memorised its answers gives a known accuracy."""
import json
from pathlib import Path

import pytest
import torch
from memorised import CASES, EXPECTED_CORRECT, EXPECTED_EXTRACTED, tiny_llama, write_paper_layout
from transformers import T5Config, T5ForConditionalGeneration

from mcckd.cli import main
from mcckd.data import Record, tokenize_record
from mcckd.data.answers import extract_answer
from mcckd.data.tokenize import encode_prompt
from mcckd.evaluation.generation import generate_greedy
from mcckd.evaluation.report import markdown_table
from mcckd.evaluation.scoring import evaluate_model, predict
from mcckd.evaluation.voting import majority_vote
from mcckd.models.attention import attention_backend, set_attention_backend
from mcckd.models.loading import load_checkpoint
from mcckd.models.word_tokenizer import train_word_tokenizer
from mcckd.training.checkpoint import save_checkpoint

OFFICIAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "mcckd-official"


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


def saved_student(memorised, folder):
    model, tokenizer, records, _ = memorised
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def eval_argv(checkpoint, data, out, *extra):
    return ["eval", "--model", str(checkpoint), "--data", str(data), "--task", "svamp", "--out", str(out),
            "--batch-size", "2", "--max-new-tokens", "40", "--device", "cpu", *extra]


def test_a_crashed_eval_keeps_its_batches_and_resumes(memorised, tmp_path, monkeypatch):
    from mcckd.evaluation import scoring

    checkpoint = saved_student(memorised, tmp_path / "student")
    data = tmp_path / "test.json"
    write_paper_layout(data, memorised[2])
    whole, out = tmp_path / "whole", tmp_path / "eval"
    assert main(eval_argv(checkpoint, data, whole)) == 0
    real = scoring.generate_batches
    generated = []

    def dies_after_two_batches(model, tokenizer, prompts, config, *, batch_size):
        batches = real(model, tokenizer, prompts, config, batch_size=batch_size)
        for number, (indices, outputs) in enumerate(batches):
            if number == 2:
                raise KeyboardInterrupt  # a crash in the third batch
            generated.extend(indices)
            yield indices, outputs

    monkeypatch.setattr(scoring, "generate_batches", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        main(eval_argv(checkpoint, data, out))
    kept = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(kept) == 4 and not (out / "summary.json").exists()  # both finished batches are on disk
    generated.clear()
    assert main(eval_argv(checkpoint, data, out)) == 0
    assert len(generated) == 1  # only the question the crash lost
    for name in ("predictions.jsonl", "summary.md"):
        assert (out / name).read_text() == (whole / name).read_text()
    assert main(eval_argv(checkpoint, data, out)) == 0 and len(generated) == 1  # done: nothing is asked


def test_out_is_checked_before_the_model_loads(memorised, tmp_path, capsys):
    data = tmp_path / "test.json"
    write_paper_layout(data, memorised[2])
    taken = tmp_path / "taken"
    taken.write_text("a file")
    # no checkpoint there either: the --out error must come first
    assert main(eval_argv(tmp_path / "missing", data, taken)) == 2
    error = capsys.readouterr().err
    assert "--out" in error and "not a folder" in error
    checkpoint = saved_student(memorised, tmp_path / "student")
    out = tmp_path / "eval"
    assert main(eval_argv(checkpoint, data, out)) == 0
    assert main(eval_argv(checkpoint, data, out, "--num-samples", "3", "--temperature", "1")) == 2
    assert "other settings" in capsys.readouterr().err


def test_in_process_self_consistency_votes_over_samples(memorised, tmp_path):
    checkpoint = saved_student(memorised, tmp_path / "student")
    data = tmp_path / "test.json"
    write_paper_layout(data, memorised[2])
    out = tmp_path / "eval"
    assert main(eval_argv(checkpoint, data, out, "--num-samples", "4", "--temperature", "1.5")) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert any(len(set(row["samples"])) > 1 for row in rows)
    for row in rows:
        assert len(row["samples"]) == 4
        assert row["sample_answers"] == [extract_answer(text, "svamp", question=row["question"])
                                         for text in row["samples"]]
        assert row["extracted"] == majority_vote(row["sample_answers"], "svamp")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 4 and summary["correct"] == sum(row["correct"] for row in rows)


def test_greedy_samples_are_refused(memorised, tmp_path, capsys):
    data = tmp_path / "test.json"
    write_paper_layout(data, memorised[2])
    assert main(eval_argv(tmp_path, data, tmp_path / "eval", "--num-samples", "3")) == 2
    assert "--temperature" in capsys.readouterr().err


def test_tasks_pair_with_data_files(memorised, tmp_path, capsys):
    data = tmp_path / "test.json"
    write_paper_layout(data, memorised[2])
    argv = ["eval", "--model", str(tmp_path), "--data", str(data), "--data", str(data), "--data", str(data),
            "--task", "svamp", "--task", "gsm8k", "--out", str(tmp_path / "eval")]
    assert main(argv) == 2
    assert "3 --data, 2 tasks" in capsys.readouterr().err
