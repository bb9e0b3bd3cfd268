"""Answering records with a student and scoring the answers: prediction rows and accuracy."""
import torch

from mcckd.data.answers import answers_match, extract_answer
from mcckd.data.prompts import PLAIN, bind_format
from mcckd.data.tasks import resolve_task
from mcckd.evaluation.generation import generate_greedy, generation_attention


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


def predict(model, tokenizer, records, task, *, batch_size=16, max_new_tokens=256, progress=False,
            prompt_format=PLAIN):
    """One row per record: id, question, gold, generated, extracted, correct; `task` is a task
    name, a Task or a task mapping (`mcckd.data.tasks`)."""
    if not records:
        raise ValueError("records: nothing to evaluate")
    task = resolve_task(task)  # an unknown task fails now, not after the generation
    bound = bind_format(tokenizer, prompt_format, encoder_decoder=model.config.is_encoder_decoder)
    prompts = [bound.prompt_ids(record.question) for record in records]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), generation_attention(model):
            texts = generate_greedy(model, tokenizer, prompts, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, progress=progress,
                                    stop_ids=bound.stop_ids)
    finally:
        model.train(was_training)
    return [prediction_row(record, text, task) for record, text in zip(records, texts)]


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


def summarize(rows, task):
    """Counts and accuracy of prediction rows; `missing` counts outputs with no answer."""
    correct = sum(row["correct"] for row in rows)
    return {
        "task": resolve_task(task).name,
        "n": len(rows),
        "correct": correct,
        "accuracy": correct / len(rows),
        "missing": sum(row["extracted"] is None for row in rows),
    }
