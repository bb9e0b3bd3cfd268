"""Evaluation during training: every eval.every steps and after the last step, on rank 0, the
other ranks waiting."""
import contextlib

import torch.distributed as dist

from mcckd.data import read_records
from mcckd.data.input_options import input_fields
from mcckd.data.prompts import format_from_config
from mcckd.evaluation.scoring import evaluate_model
from mcckd.models.attention import transformers_attention
from mcckd.models.wrappers import is_encoder_decoder


def evaluation_hook(config):
    """(model, tokenizer, step) -> metrics evaluating on config.eval's records; None without."""
    ev = config.eval
    if not ev.every:
        return None
    task = ev.task or config.data.task
    records = read_records(ev.data, task, fields=input_fields(ev), split=ev.split)[:ev.limit]
    prompt_format = format_from_config(config.data)  # the student answers as it is trained

    def evaluate(model, tokenizer, step):
        return evaluate_model(model, tokenizer, records, task, batch_size=ev.batch_size,
                              max_new_tokens=ev.max_new_tokens, prompt_format=prompt_format)
    return evaluate


def run_evaluation(evaluate, student, step, rt, log):
    """Evaluate on rank 0 with transformers' attention (generation), the others waiting."""
    if rt.rank == 0:
        attention = (contextlib.nullcontext() if is_encoder_decoder(student.model)
                     else transformers_attention(student.model))
        with attention:
            results = evaluate(student.model, student.tokenizer, step)
        log.write(
            {"step": step, **{f"eval_{k}": v for k, v in results.items() if isinstance(v, (int, float))}}
        )
    if rt.world_size > 1:
        dist.barrier()
