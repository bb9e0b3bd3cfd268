"""Answering records with a student and scoring the answers: prediction rows and accuracy.

A question answered once (greedy) gives the row {id, question, gold, generated, extracted,
correct}. A question answered with several samples (self-consistency) is scored on the answer
most samples reach (`voting.majority_vote`); its row adds `samples` and `sample_answers`, and
`generated` is the first sample that reaches the voted answer.
"""
import torch
from tqdm import tqdm

from mcckd.data.answers import answers_match, extract_answer
from mcckd.data.prompts import PLAIN, bind_format
from mcckd.data.tasks import resolve_task
from mcckd.evaluation.generation import (
    generate_batches,
    generation_attention,
    greedy_config,
    padding_id,
    sampling_config,
)
from mcckd.evaluation.voting import majority_vote


def evaluate_model(model, tokenizer, records, task, *, batch_size=16, max_new_tokens=256, progress=False,
                   prompt_format=PLAIN):
    """The accuracy summary {"task", "n", "correct", "accuracy", "missing"} of `model` on
    `records`, answered greedily.

    For periodic evaluation in the training loop: pass the bare model (not a DDP wrapper), peft
    wrapped or not. Its train/eval mode and its attention backend are as before afterwards.
    """
    rows = predict(model, tokenizer, records, task, batch_size=batch_size,
                   max_new_tokens=max_new_tokens, progress=progress, prompt_format=prompt_format)
    return summarize(rows, task)


def predict(model, tokenizer, records, task, *, batch_size=16, max_new_tokens=256, num_samples=1,
            temperature=0.0, progress=False, prompt_format=PLAIN):
    """One row per record, in order (the module docstring says what a row holds)."""
    rows = [None] * len(records)

    def keep(indices, batch_rows):
        for index, row in zip(indices, batch_rows):
            rows[index] = row

    predict_batches(model, tokenizer, records, task, keep, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, num_samples=num_samples, temperature=temperature,
                    progress=progress, prompt_format=prompt_format)
    return rows


def predict_batches(model, tokenizer, records, task, on_batch, *, batch_size=16, max_new_tokens=256,
                    num_samples=1, temperature=0.0, progress=False, prompt_format=PLAIN):
    """Answer `records` a batch at a time, calling `on_batch(indices, rows)` after each batch
    (indices into `records`; batches go longest prompt first), each from the prompt of
    `prompt_format` (`mcckd.data.prompts`), the one the student was trained on.

    Greedy with `num_samples` 1 and `temperature` 0; else `num_samples` samples a question at
    `temperature`, scored by majority vote.
    """
    if not records:
        raise ValueError("records: nothing to evaluate")
    task = resolve_task(task)  # an unknown task fails now, not after the generation
    bound = bind_format(tokenizer, prompt_format, encoder_decoder=model.config.is_encoder_decoder)
    prompts = bound.prompts_ids([record.question for record in records])
    if num_samples == 1 and temperature == 0:
        config = greedy_config(model, tokenizer, max_new_tokens, padding_id(tokenizer),
                               stop_ids=bound.stop_ids)
    else:
        config = sampling_config(model, tokenizer, max_new_tokens, num_samples=num_samples,
                                 temperature=temperature, stop_ids=bound.stop_ids)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), generation_attention(model), \
                tqdm(total=len(records), desc="eval", unit="question", disable=not progress) as bar:
            for indices, outputs in generate_batches(model, tokenizer, prompts, config,
                                                     batch_size=batch_size):
                on_batch(indices, [answer_row(records[i], texts, task) for i, texts in zip(indices, outputs)])
                bar.update(len(indices))
    finally:
        model.train(was_training)


def answer_row(record, texts, task):
    """The row of a record answered with the generated `texts` (one, or several samples)."""
    if len(texts) == 1:
        return prediction_row(record, texts[0], task)
    answers = [extract_answer(text, task, question=record.question) for text in texts]
    voted = majority_vote(answers, task)
    return {
        **prediction_row(record, texts[answers.index(voted)] if voted is not None else texts[0], task),
        "extracted": voted,
        "correct": answers_match(voted, record.answer, task),
        "samples": list(texts),
        "sample_answers": answers,
    }


def prediction_row(record, generated, task):
    """The evaluation of one generated answer against the record's gold answer."""
    extracted = extract_answer(generated, task, question=record.question)
    return {
        "id": record.id,
        "question": record.question,
        "gold": record.answer,
        "generated": generated,
        "extracted": extracted,
        "correct": answers_match(extracted, record.answer, task),
    }


def summarize(rows, task, *, failed=0):
    """Counts and accuracy of prediction rows: `missing` counts outputs with no answer,
    `failed` questions a server never answered (wrong, and part of n). With samples,
    `sample_accuracy` is the mean accuracy of a single sample."""
    n = len(rows) + failed
    correct = sum(row["correct"] for row in rows)
    task = resolve_task(task)
    summary = {
        "task": task.name,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "missing": sum(row["extracted"] is None for row in rows),
    }
    if failed:
        summary["failed"] = failed
    sampled = [row for row in rows if "samples" in row]
    if sampled:
        summary["sample_accuracy"] = sum(
            sum(answers_match(answer, row["gold"], task) for answer in row["sample_answers"])
            / len(row["sample_answers"])
            for row in sampled
        ) / n
    return summary
