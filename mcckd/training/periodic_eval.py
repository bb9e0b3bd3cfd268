"""Evaluation during training: every eval.every steps on rank 0, the other ranks waiting."""
import contextlib

import torch.distributed as dist

from mcckd.data import read_records
from mcckd.evaluation.scoring import evaluate_model
from mcckd.models.attention import transformers_attention
from mcckd.models.wrappers import is_encoder_decoder


def evaluation_hook(config):
    """(model, tokenizer, step) -> metrics evaluating on config.eval's records; None without."""
    ev = config.eval
    if not ev.every:
        return None
    task = ev.task or config.data.task
    records = read_records(ev.data, task)[:ev.limit]

    def evaluate(model, tokenizer, step):
        return evaluate_model(model, tokenizer, records, task, batch_size=ev.batch_size,
                              max_new_tokens=ev.max_new_tokens)
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
