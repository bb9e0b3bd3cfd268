"""Evaluation: batched greedy generation, answer extraction, accuracy reports.

`mcckd eval --model DIR --data FILE --task TASK --out DIR` (or `--task-file TASK.yaml`, a task
of one's own: `mcckd.data.tasks`) loads a student checkpoint (a full
model or a LoRA adapter), answers every question of FILE greedily, reads the final answer out
of each output with the data package's extraction, and writes to DIR:

    predictions.jsonl   one line per question: id, question, gold, generated, extracted, correct
    summary.json        {"task", "n", "correct", "accuracy", "missing", ...}
    summary.md          the same as a markdown table

An output with no extractable answer counts as wrong and as `missing`. Accuracy is correct / n.

Decoder-only students see the prompt they were trained on (the run's prompt format, plain
`Question: {question}\\nAnswer:` or the chat template's, see prompting.py) left-padded, so
every row of a batch ends at the same column and generation continues from there with a KV
cache; encoder-decoder students (T5) get the question in the encoder. Prompts are sorted by
length before batching so that little padding is computed. FILE may be any input that
`mcckd prepare` reads (JSON(L), CSV, parquet, a dataset), its fields named by --question-field
and --answer-field.

The training loop calls `evaluate_model(model, tokenizer, records, task)` for periodic
evaluation on held-out records.
"""
import sys
import time

import torch

from mcckd.arguments import positive_int
from mcckd.data.input_options import add_input_arguments, input_fields
from mcckd.data.records import read_records
from mcckd.data.tasks import add_task_arguments, task_from_args
from mcckd.evaluation.prompting import add_prompt_arguments, eval_prompt_format
from mcckd.evaluation.report import markdown_table, write_report
from mcckd.evaluation.scoring import predict, summarize
from mcckd.models.dtypes import DTYPES
from mcckd.models.loading import load_checkpoint, resolve_dtype


def add_arguments(parser):
    """Arguments of `mcckd eval`."""
    parser.add_argument("--model", required=True, help="checkpoint folder: a full model or a LoRA adapter")
    parser.add_argument("--data", required=True, help="records to answer (canonical or the paper's layout)")
    add_task_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for predictions.jsonl, summary.json, summary.md")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="questions per generate call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=256, help="generation length limit")
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="weights dtype (auto: bfloat16 on a GPU that supports it, else float32)")
    add_prompt_arguments(parser)
    add_input_arguments(parser, rationales=False)


def run(args):
    """`mcckd eval`: answer every question, write predictions and the accuracy summary."""
    task = task_from_args(args)
    records = read_records(args.data, task, fields=input_fields(args), split=args.split)
    prompt_format, format_source = eval_prompt_format(args.model, args)
    print(f"mcckd eval: prompt format {prompt_format.kind} (from {format_source})", file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_checkpoint(args.model, device=device, dtype=resolve_dtype(args.dtype, device))
    started = time.perf_counter()
    rows = predict(model, tokenizer, records, task, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, progress=True, prompt_format=prompt_format)
    summary = {
        **summarize(rows, task),
        "model": str(args.model),
        "data": str(args.data),
        "max_new_tokens": args.max_new_tokens,
        "prompt_format": prompt_format.kind,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_report(args.out, rows, summary)
    print(markdown_table(summary))
    return 0
