"""`mcckd eval`: answer test sets with a student, in-process or through a server, and report
its accuracy.

    mcckd eval --model CHECKPOINT --data FILE --task TASK --out DIR
    mcckd eval --endpoint http://host:8000/v1 --model NAME --tokenizer EXPORTED_FOLDER \\
        --data gsm8k.json --task gsm8k --data svamp.json --task svamp --out DIR

In-process, the checkpoint (a full model or a LoRA adapter) answers in padded batches
(`generation.py`); with `--endpoint` an OpenAI-compatible server does (`endpoint.py`). Either
way every question gets the training prompt, greedy decoding unless `--num-samples` asks for
self-consistency, and the final answer is read out of each output with the data package's
extraction (`scoring.py`). DIR gets predictions.jsonl (id, question, gold, generated,
extracted, correct), summary.json ({"task", "n", "correct", "accuracy", "missing", ...}) and
summary.md; an output with no extractable answer counts as wrong and as `missing`. Several
`--data` files (each with its `--task`, or one `--task` for all) get a folder each under DIR.

Every question gets the prompt the student was trained on: the run's prompt format (plain
`Question: {question}\nAnswer:` or the chat template's), read from the run's config.yaml beside
the checkpoint, or the one --format/--system/--prompt-template give (`prompting.py`). FILE may
be any input that `mcckd prepare` reads (JSON(L), CSV, parquet, a dataset), its fields named by
--question-field and --answer-field.

Nothing is lost to a crash: DIR is checked before the model loads, predictions are appended
and fsynced as they come, and rerunning the same command resumes where it stopped
(`results.py`).

The training loop calls `evaluate_model(model, tokenizer, records, task)` for periodic
evaluation on held-out records.
"""
import dataclasses
import sys
import time
from pathlib import Path

import torch

from mcckd.arguments import non_negative_float, positive_int
from mcckd.data.input_options import add_input_arguments, input_fields
from mcckd.data.records import read_records
from mcckd.data.resumable import replace_file
from mcckd.data.tasks import add_task_arguments, tasks_from_args
from mcckd.errors import InputError
from mcckd.evaluation.prompting import add_prompt_arguments, eval_prompt_format
from mcckd.evaluation.report import TABLE_FILE, markdown_table
from mcckd.evaluation.results import ResultsFolder, check_out, set_names
from mcckd.models.dtypes import DTYPES
from mcckd.teacher.client import ServerError
from mcckd.teacher.options import add_server_arguments


def add_arguments(parser):
    """Arguments of `mcckd eval`."""
    parser.add_argument("--model", required=True,
                        help="checkpoint folder (a full model or a LoRA adapter); with --endpoint, "
                             "the name of the model the server serves")
    parser.add_argument("--data", required=True, action="append",
                        help="records to answer (canonical or the paper's layout); repeat for several sets")
    add_task_arguments(parser, per_data=True)
    parser.add_argument("--out", required=True,
                        help="folder for predictions.jsonl, summary.json, summary.md (one subfolder per "
                             "set when there are several); rerunning resumes")
    parser.add_argument("--max-new-tokens", type=positive_int, default=256, help="generation length limit")
    parser.add_argument("--num-samples", type=positive_int, default=1,
                        help="samples per question; above 1 the majority answer is scored (self-consistency)")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0,
                        help="sampling temperature (0: greedy); must be above 0 with --num-samples above 1")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    local = parser.add_argument_group("in-process")
    local.add_argument("--batch-size", type=positive_int, default=16, help="questions per generate call")
    local.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    local.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                       help="weights dtype (auto: bfloat16 on a GPU that supports it, else float32)")
    server = parser.add_argument_group("server")
    server.add_argument("--endpoint", help="evaluate through this OpenAI-compatible server: base URL "
                                           "(http://host:8000/v1) instead of loading --model here")
    server.add_argument("--api", choices=("completions", "chat"), default="completions",
                        help="completions (default): the training prompt's exact token ids; chat: the "
                             "question as a user message under the served model's chat template")
    server.add_argument("--tokenizer", help="the student's tokenizer folder, for the prompt's token ids "
                                            "(default: --model when it is a folder)")
    add_server_arguments(server)
    add_prompt_arguments(parser)
    add_input_arguments(parser, rationales=False)


def run(args):
    """`mcckd eval`: check everything, answer what is not answered yet, write the reports."""
    sets = read_sets(args.data, tasks_from_args(args), fields=input_fields(args), split=args.split)
    if args.num_samples > 1 and args.temperature == 0:
        raise InputError("--num-samples above 1 needs --temperature above 0: greedy samples are all the same")
    args.prompt_format = resolve_prompt_format(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = check_out(args.out)
    folders = [out] if len(sets) == 1 else [out / name for name in set_names(args.data)]
    results = [ResultsFolder(folder, evaluation_settings(args, path, task, device))
               for folder, (path, task, _) in zip(folders, sets)]
    todo = [result.todo(records, retry_failed=args.retry_failed)
            for result, (_, _, records) in zip(results, sets)]
    started = time.perf_counter()
    if any(todo):
        answer = endpoint_answerer(args) if args.endpoint else local_answerer(args, device)
        try:
            for result, (_, task, _), records in zip(results, sets, todo):
                if records:
                    answer(records, task, result)
        except ServerError as error:
            print(f"mcckd: error: {error} (rerun the same command to resume)", file=sys.stderr)
            return 1
    seconds = round(time.perf_counter() - started, 3)
    summaries = [result.finish(records, task, summary_details(args, path, seconds))
                 for result, (path, task, records) in zip(results, sets)]
    table = markdown_table(*summaries)
    if len(sets) > 1:
        replace_file(out / TABLE_FILE, table + "\n")
    print(table)
    return 0


def resolve_prompt_format(args):
    """The PromptFormat the questions are asked in (announced on stderr); None when the server's
    own chat template builds the prompt (`--api chat`)."""
    if args.endpoint and args.api == "chat":
        return None
    prompt_format, source = eval_prompt_format(tokenizer_source(args) if args.endpoint else args.model, args)
    print(f"mcckd eval: prompt format {prompt_format.kind} (from {source})", file=sys.stderr)
    return prompt_format


def read_sets(paths, tasks, *, fields=None, split=None):
    """[(path, task, records)] of the --data files, with their --task."""
    if len(tasks) == 1:
        tasks = tasks * len(paths)
    if len(tasks) != len(paths):
        raise InputError(f"--task/--task-file: give one task for all --data files or one per file "
                         f"({len(paths)} --data, {len(tasks)} tasks)")
    sets = []
    for path, task in zip(paths, tasks):
        records = read_records(path, task, fields=fields, split=split, unique_ids=True)
        sets.append((path, task, records))
    return sets


def evaluation_settings(args, path, task, device):
    """What decides the predictions of one set: a rerun resumes only when these are the same."""
    from mcckd.models.loading import resolve_dtype

    settings = {"data": str(Path(path).resolve()), "task": task.name,
                "max_new_tokens": args.max_new_tokens,
                "num_samples": args.num_samples, "temperature": args.temperature,
                "prompt_format": args.prompt_format and dataclasses.asdict(args.prompt_format)}
    if args.temperature > 0:
        settings["seed"] = args.seed
    if args.endpoint:
        settings.update(endpoint=args.endpoint, model=args.model, api=args.api)
        if args.api == "completions":
            settings["tokenizer"] = str(Path(tokenizer_source(args)).resolve())
    else:
        settings.update(model=str(Path(args.model).resolve()),
                        dtype=str(resolve_dtype(args.dtype, device)).removeprefix("torch."))
    return settings


def summary_details(args, path, seconds):
    """What a summary says besides the counts."""
    details = {"model": str(args.model), "data": str(path), "max_new_tokens": args.max_new_tokens,
               "num_samples": args.num_samples, "temperature": args.temperature, "seconds": seconds,
               "prompt_format": args.prompt_format.kind if args.prompt_format else "server chat template"}
    if args.endpoint:
        details.update(endpoint=args.endpoint, api=args.api)
    return details


def local_answerer(args, device):
    """(records, task, results) -> None answering with the checkpoint loaded here."""
    from mcckd.evaluation.scoring import predict_batches
    from mcckd.models.loading import load_checkpoint, resolve_dtype

    model, tokenizer = load_checkpoint(args.model, device=device, dtype=resolve_dtype(args.dtype, device))

    def answer(records, task, results):
        torch.manual_seed(args.seed)
        predict_batches(model, tokenizer, records, task, lambda _, rows: results.append(rows),
                        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                        num_samples=args.num_samples, temperature=args.temperature, progress=True,
                        prompt_format=args.prompt_format)
    return answer


def endpoint_answerer(args):
    """(records, task, results) -> None answering through the server of --endpoint."""
    from mcckd.evaluation.endpoint import CLIENTS, endpoint_prompts, predict_endpoint, prompt_tokenizer
    from mcckd.teacher.options import make_client

    tokenizer, encoder_decoder = None, False
    if args.api == "completions":
        tokenizer, encoder_decoder = prompt_tokenizer(tokenizer_source(args))

    def answer(records, task, results):
        # a fresh client per set: a finished run cancels its client's retries
        predict_endpoint(make_client(args, CLIENTS[args.api]), records,
                         endpoint_prompts(records, args.api, tokenizer, encoder_decoder, args.prompt_format),
                         task, results,
                         num_samples=args.num_samples, temperature=args.temperature,
                         max_tokens=args.max_new_tokens, concurrency=args.concurrency,
                         seed=args.seed if args.temperature > 0 else None)
    return answer


def tokenizer_source(args):
    """Where the student's tokenizer is, for the completions API's token-id prompts."""
    source = args.tokenizer or (args.model if Path(args.model).is_dir() else None)
    if source is None:
        raise InputError("--endpoint with the completions API needs --tokenizer: the student's folder, "
                         "to send the training prompt's token ids")
    return source
