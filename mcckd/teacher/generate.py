"""Teacher rationale generation: N chain-of-thought samples per question, one record a line.

`mcckd generate INPUT --endpoint URL --model NAME --num-samples N --temperature T --task TASK
--out OUT.jsonl` (or `--task-file TASK.yaml`, a task of one's own: `mcckd.data.tasks`) asks an
OpenAI-compatible chat-completions server (vLLM, SGLang, TGI and others serve this API) for N
rationales per question, with bounded concurrency; `--local DIR` samples them from a
transformers model instead, the prompt as the user's turn of the model's chat template
(`--format chat`, with an optional `--system` message; by default when it has one) or as plain
text (`--format plain`). The prompt asks for step-by-step reasoning that ends in the fixed
sentence "Therefore, the answer is X.", which `mcckd prepare` reads. INPUT is any input
`mcckd prepare` reads (JSON(L), CSV, parquet, a dataset; --question-field and the like).

Each finished question is appended to OUT as one canonical record (question, answer = the
label, rationales) and flushed and fsynced before the next is written, so a crash loses only
the questions in flight. Rerunning the same command resumes: questions already in OUT are not
asked again, and a torn last line (a crash mid-write) is cut off and its question redone.
Questions are told apart by their ids (in the paper's layout, their position in INPUT).

The server is retried with exponential backoff and jitter on connection errors, on 429 (at
least as long as its Retry-After says, up to `--max-retry-after`) and on 5xx (`client.py`).
A question that fails for good (a 400, 413 or 422, or malformed replies after every retry) is
written with its reason to the sidecar file OUT's stem + `.failures.jsonl` and the run goes on;
a rerun skips it unless `--retry-failed` is given, and the last line of a run counts the
failures. Other 4xx (a wrong key, model or URL) and a server still down after the retries stop
the run; the answers already received are written first. The API key is read from an
environment variable (`--api-key-env`, default OPENAI_API_KEY) and only ever sent in the
Authorization header: never logged or written.
"""
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from mcckd.arguments import non_negative_float, positive_int
from mcckd.data.input_options import add_input_arguments, input_fields
from mcckd.data.prompts import FORMATS, chat_prompt_ids
from mcckd.data.records import read_records
from mcckd.data.resumable import append_line, finished_ids
from mcckd.data.tasks import add_task_arguments, resolve_task, task_from_args
from mcckd.errors import InputError
from mcckd.teacher.client import ChatCompletionsClient, ServerError
from mcckd.teacher.options import add_server_arguments, failures_path, make_client
from mcckd.teacher.pool import ask_all

DEFAULT_PROMPT = (
    "Answer the question below. Think step by step and write out your reasoning, then finish "
    "with one last line of the form \"Therefore, the answer is X.\" where X is {answer_kind}.\n\n"
    "Question: {question}"
)


def add_arguments(parser):
    """Arguments of `mcckd generate`."""
    parser.add_argument("input", help="questions with their gold answers (canonical or the paper's layout)")
    add_task_arguments(parser)
    parser.add_argument("--out", required=True, help="JSON-lines output, appended to and resumed")
    parser.add_argument("--num-samples", type=positive_int, required=True, help="rationales per question")
    parser.add_argument("--temperature", type=non_negative_float, required=True, help="sampling temperature")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--endpoint", help="OpenAI-compatible server: base URL (http://host:8000/v1) "
                                           "or the full /chat/completions URL")
    source.add_argument(
        "--local", metavar="MODEL", help="generate with this transformers model folder instead"
    )
    parser.add_argument("--model", help="model name the server serves (with --endpoint)")
    parser.add_argument("--max-tokens", type=positive_int, default=512, help="length limit of one rationale")
    parser.add_argument(
        "--prompt",
        help="prompt template file: {question} is replaced by the question, "
        "{answer_kind} by what the answer is (a number, a letter, yes or no; a task file's description)",
    )
    add_server_arguments(parser.add_argument_group("server"))
    local = parser.add_argument_group("local")
    local.add_argument("--batch-size", type=positive_int, default=8, help="questions per generate call")
    local.add_argument("--seed", type=int, default=0, help="sampling seed")
    local.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    local.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                       help="the prompt as the user's turn of the model's chat template (chat), or as "
                            "text (plain); auto: chat when the model's tokenizer has a template")
    local.add_argument("--system", help="a system message before the prompt (--format chat)")
    add_input_arguments(parser, rationales=False)


def run(args):
    """`mcckd generate`: sample rationales for the questions not yet in the output file."""
    task = task_from_args(args)
    records = read_records(args.input, task, fields=input_fields(args), split=args.split, unique_ids=True)
    template = read_prompt(args.prompt)
    if args.endpoint and not args.model:
        raise InputError("--endpoint needs --model, the name of the model the server serves")
    if args.endpoint and (args.format != "auto" or args.system is not None):
        raise InputError("--format and --system shape a --local model's prompt; "
                         "a server applies its own template")
    if args.local and args.temperature == 0:
        raise InputError("--local samples: --temperature must be above 0")
    if args.local:
        from mcckd.models.loading import check_checkpoint_folder  # transformers loads only for --local

        check_checkpoint_folder(Path(args.local))
    done, failures = finished_ids(args.out), failures_path(args.out)
    skipped = set() if args.retry_failed else finished_ids(failures) - done
    todo = [record for record in records if record.id not in done and record.id not in skipped]
    print(f"mcckd generate: {len(done)} of {len(records)} questions already in {args.out}"
          + (f", {len(skipped)} failed before (--retry-failed asks them again)" if skipped else ""),
          file=sys.stderr)
    if not todo:
        return 0
    prompts = [build_prompt(template, record.question, task) for record in todo]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "ab") as handle:
        def write(record, rationales):
            append_line(handle, asdict(replace(record, rationales=rationales)))

        def fail(record, reason):
            with open(failures, "ab") as failed:  # rare: opened when needed
                append_line(failed, {"id": record.id, "reason": reason})

        progress = tqdm(total=len(records), initial=len(records) - len(todo), desc="generate",
                        unit="question")
        with progress:
            try:
                if args.local:
                    generate_local(args, todo, prompts, write, progress)
                else:
                    generate_remote(make_client(args, ChatCompletionsClient), todo, prompts, write, fail,
                                    progress, num_samples=args.num_samples, temperature=args.temperature,
                                    max_tokens=args.max_tokens, concurrency=args.concurrency)
            except ServerError as error:
                print(f"mcckd: error: {error}", file=sys.stderr)
                report_failures(records, args.out, failures, todo)
                return 1
    return report_failures(records, args.out, failures, todo)


def report_failures(records, out, failures, todo):
    """Print how many questions failed for good; the exit code: 1 when some did and none of
    the questions asked got its answer, else 0."""
    done = finished_ids(out)
    failed = {record.id for record in records} & (finished_ids(failures) - done)
    if not failed:
        Path(failures).unlink(missing_ok=True)
        return 0
    print(f"mcckd generate: {len(done)} of {len(records)} questions in {out}; {len(failed)} failed for good "
          f"(reasons in {failures}; --retry-failed asks them again)", file=sys.stderr)
    return 0 if done & {record.id for record in todo} else 1


def read_prompt(path):
    """The prompt template: the file's text, or the default chain-of-thought prompt."""
    if path is None:
        return DEFAULT_PROMPT
    try:
        template = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the prompt: {error}") from error
    if "{question}" not in template:
        raise InputError(f"{path}: the prompt template has no {{question}} placeholder")
    return template


def build_prompt(template, question, task):
    """The template with the question and the kind of answer (`task`: a name or a Task) filled in.

    Plain replacement, not str.format: a template may hold other braces (JSON examples).
    """
    answer_kind = resolve_task(task).answer_kind
    return template.replace("{answer_kind}", answer_kind).replace("{question}", question)


def generate_remote(client, records, prompts, write, fail, progress, *, num_samples, temperature, max_tokens,
                    concurrency):
    """Ask the server for every record's rationales, at most `concurrency` questions at a time
    (`pool.ask_all`).

    `write(record, rationales)` and `fail(record, reason)` run on this thread as each question
    completes or fails for good, so writes never interleave.
    """
    def ask(item):
        return client.sample(item[1], n=num_samples, temperature=temperature, max_tokens=max_tokens)

    def answered(item, rationales):
        write(item[0], rationales)
        progress.update(1)

    def failed(item, reason):
        fail(item[0], reason)
        progress.update(1)

    ask_all(client, list(zip(records, prompts)), ask, concurrency=concurrency, on_answer=answered,
            on_failure=failed)


def generate_local(args, records, prompts, write, progress):
    """Sample every record's rationales from the transformers model `args.local`, a batch of
    questions at a time."""
    # transformers loads only for --local
    from mcckd.evaluation.generation import generate_batches, sampling_config
    from mcckd.models.loading import load_checkpoint, resolve_dtype

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_checkpoint(args.local, device=device, dtype=resolve_dtype("auto", device))
    config = sampling_config(model, tokenizer, args.max_tokens, num_samples=args.num_samples,
                             temperature=args.temperature)
    prompt_ids = [local_prompt_ids(tokenizer, prompt, args.format, args.system) for prompt in prompts]
    torch.manual_seed(args.seed)
    with torch.inference_mode():
        batches = generate_batches(model, tokenizer, prompt_ids, config, batch_size=args.batch_size)
        for indices, outputs in batches:
            for index, texts in zip(indices, outputs):
                write(records[index], texts)
            progress.update(len(indices))


def local_prompt_ids(tokenizer, prompt, prompt_format="auto", system=None):
    """Token ids of the prompt as a user turn of the model's chat template ("chat", or "auto"
    with a template), after the system message if any, or as plain text."""
    if prompt_format == "chat" or (prompt_format == "auto" and tokenizer.chat_template):
        return chat_prompt_ids(tokenizer, prompt, system)
    if system is not None:
        raise InputError("--system is a message of the chat format: the prompt is plain text here "
                         "(--format plain, or a model without a chat template)")
    return tokenizer(prompt)["input_ids"]
