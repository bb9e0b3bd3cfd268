"""Evaluation: batched greedy generation, answer extraction, accuracy reports.

`mcckd eval --model DIR --data FILE --task TASK --out DIR` loads a student checkpoint (a full
model or a LoRA adapter), answers every question of FILE greedily, reads the final answer out
of each output with the data package's extraction, and writes to DIR:

    predictions.jsonl   one line per question: id, question, gold, generated, extracted, correct
    summary.json        {"task", "n", "correct", "accuracy", "missing", ...}
    summary.md          the same as a markdown table

An output with no extractable answer counts as wrong and as `missing`. Accuracy is correct / n.

Decoder-only students see the training prompt `Question: {question}\\nAnswer:` left-padded,
so every row of a batch ends at the same column and generation continues from there with a KV
cache; encoder-decoder students (T5) get the question in the encoder. Prompts are sorted by
length before batching so that little padding is computed.

The training loop calls `evaluate_model(model, tokenizer, records, task)` for periodic
evaluation on held-out records.
"""
import contextlib
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

from mcckd.checkpoint import BASE_SUBFOLDER
from mcckd.cli import positive_int
from mcckd.data.answers import TASKS, answers_match, extract_answer, task_kind
from mcckd.data.records import read_records
from mcckd.data.tokenize import PromptTemplate, encode
from mcckd.errors import InputError
from mcckd.modeling import DTYPES, attention_backend, parse_dtype, transformers_attention

PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "summary.md"


def add_arguments(parser):
    """Arguments of `mcckd eval`."""
    parser.add_argument("--model", required=True, help="checkpoint folder: a full model or a LoRA adapter")
    parser.add_argument("--data", required=True, help="records to answer (canonical or the paper's layout)")
    parser.add_argument("--task", required=True, choices=TASKS, help="the task, for answer extraction")
    parser.add_argument("--out", required=True, help="folder for predictions.jsonl, summary.json, summary.md")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="questions per generate call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=256, help="generation length limit")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="weights dtype (auto: bfloat16 on a GPU that supports it, else float32)")


def run(args):
    """`mcckd eval`: answer every question, write predictions and the accuracy summary."""
    records = read_records(args.data, args.task)
    if not records:
        raise InputError(f"{args.data}: no records")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_checkpoint(args.model, device=device, dtype=resolve_dtype(args.dtype, device))
    started = time.perf_counter()
    rows = predict(model, tokenizer, records, args.task, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, progress=True)
    summary = {
        **summarize(rows, args.task),
        "model": str(args.model),
        "data": str(args.data),
        "max_new_tokens": args.max_new_tokens,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_report(args.out, rows, summary)
    print(markdown_table(summary))
    return 0


def load_checkpoint(path, *, device="cpu", dtype=torch.float32):
    """(model, tokenizer) of a checkpoint folder, in eval mode on `device`.

    A full model (`config.json` + safetensors) loads as it is. A LoRA adapter
    (`adapter_config.json`) loads onto its base model, taken from the `mcckd_base/` subfolder
    when there is one, else from the adapter's `base_model_name_or_path`, and is merged into
    it: generation then runs at the base model's speed. The tokenizer is the checkpoint's own,
    else the base model's.
    """
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        base = adapter_base(path)
        model = load_pretrained(base, dtype)
        model = load_adapter(model, path).merge_and_unload()
    elif (path / "config.json").is_file():
        base = path
        model = load_pretrained(path, dtype)
    else:
        raise InputError(f"{path}: not a checkpoint folder (no config.json or adapter_config.json)")
    tokenizer_source = path if has_tokenizer(path) else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except (OSError, ValueError) as error:
        raise InputError(f"{tokenizer_source}: cannot load the tokenizer: {error}") from error
    return model.to(device).eval(), tokenizer


def adapter_base(path):
    """Where the base model of the LoRA adapter in `path` is."""
    if (path / BASE_SUBFOLDER / "config.json").is_file():
        return path / BASE_SUBFOLDER
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    name = config.get("base_model_name_or_path")
    if not name:
        raise InputError(f"{path}: the adapter names no base model and has no {BASE_SUBFOLDER}/ folder")
    beside = path / name
    return beside if beside.is_dir() else name


def load_pretrained(source, dtype):
    """A causal or sequence-to-sequence LM, chosen by its config."""
    try:
        config = AutoConfig.from_pretrained(source)
        model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        return model_class.from_pretrained(source, config=config, dtype=dtype)
    except (OSError, ValueError) as error:
        raise InputError(f"{source}: cannot load the model: {error}") from error


def load_adapter(model, path):
    """`model` with the peft adapter in `path` applied."""
    from peft import PeftModel  # only LoRA checkpoints need peft

    try:
        return PeftModel.from_pretrained(model, path)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot load the adapter: {error}") from error


def has_tokenizer(path):
    """Whether a folder holds tokenizer files."""
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def resolve_dtype(name, device):
    """The torch dtype named by --dtype; "auto" is bfloat16 on a GPU that has it, else float32."""
    if name != "auto":
        return parse_dtype(name)
    if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def evaluate_model(model, tokenizer, records, task, *, batch_size=16, max_new_tokens=256, progress=False):
    """The accuracy summary {"task", "n", "correct", "accuracy", "missing"} of `model` on
    `records`, answered greedily.

    For periodic evaluation in the training loop: pass the bare model (not a DDP wrapper), peft
    wrapped or not. Its train/eval mode and its attention backend are as before afterwards.
    """
    rows = predict(model, tokenizer, records, task, batch_size=batch_size,
                   max_new_tokens=max_new_tokens, progress=progress)
    return summarize(rows, task)


def predict(model, tokenizer, records, task, *, batch_size=16, max_new_tokens=256, progress=False):
    """One row per record: id, question, gold, generated, extracted, correct."""
    if not records:
        raise ValueError("records: nothing to evaluate")
    task_kind(task)  # an unknown task fails now, not after the generation
    prompts = [encode_prompt(tokenizer, record.question, model) for record in records]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), generation_attention(model):
            texts = generate_greedy(model, tokenizer, prompts, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, progress=progress)
    finally:
        model.train(was_training)
    return [prediction_row(record, text, task) for record, text in zip(records, texts)]


def encode_prompt(tokenizer, question, model, template=PromptTemplate()):
    """Token ids of the prompt the student was trained on.

    Decoder-only: [BOS] + "Question: {question}\nAnswer:", as `mcckd.data.tokenize` builds it.
    Encoder-decoder: the same text with the tokenizer's own special tokens (T5 closes with EOS).
    """
    text = template.prompt.format(question=question)
    if model.config.is_encoder_decoder:
        return list(tokenizer(text)["input_ids"])
    bos = [tokenizer.bos_token_id] if template.add_bos and tokenizer.bos_token_id is not None else []
    return bos + encode(tokenizer, text)


def generation_attention(model):
    """transformers' own attention for the duration of generation when the model trains with a
    packed backend of `mcckd.modeling`, which serves packed batches only."""
    return transformers_attention(model) if attention_backend(model) else contextlib.nullcontext()


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
        "task": task,
        "n": len(rows),
        "correct": correct,
        "accuracy": correct / len(rows),
        "missing": sum(row["extracted"] is None for row in rows),
    }


def generate_greedy(model, tokenizer, prompts, *, batch_size=16, max_new_tokens=256, progress=False):
    """The greedy continuation of each token-id prompt, decoded without special tokens, in order."""
    config = greedy_config(model, tokenizer, max_new_tokens, padding_id(tokenizer))
    texts = [None] * len(prompts)
    with tqdm(total=len(prompts), desc="eval", unit="question", disable=not progress) as bar:
        for indices, outputs in generate_batches(model, tokenizer, prompts, config, batch_size=batch_size):
            for index, (text,) in zip(indices, outputs):
                texts[index] = text
            bar.update(len(indices))
    return texts


def generate_batches(model, tokenizer, prompts, config, *, batch_size):
    """Generate from token-id prompts `batch_size` at a time; yields (indices, outputs) per batch.

    outputs[j] holds the `config.num_return_sequences` decoded continuations of
    prompts[indices[j]]. Decoder-only prompts are left-padded, so every row continues from the
    same column. The longest prompts go first: batches hold prompts of similar length, and a
    batch that runs out of memory does so at once.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    left_pad = not model.config.is_encoder_decoder
    device = next(model.parameters()).device
    per_prompt = config.num_return_sequences or 1
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        input_ids, attention_mask = pad_batch([prompts[i] for i in indices], config.pad_token_id, left_pad, device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        if left_pad:
            output = output[:, input_ids.shape[1]:]  # a decoder-only output repeats its prompt
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        yield indices, [texts[j * per_prompt:(j + 1) * per_prompt] for j in range(len(indices))]


def padding_id(tokenizer):
    """The id that fills padding: the pad token, else EOS (masked out either way)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


def greedy_config(model, tokenizer, max_new_tokens, pad_id):
    """Greedy decoding with a KV cache, stopping at the tokenizer's or the model's EOS.

    A fresh config rather than the model's: a checkpoint's sampling defaults must not apply.
    """
    stop = [tokenizer.eos_token_id, *as_list(model.generation_config.eos_token_id)]
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=sorted({token for token in stop if token is not None}) or None,
        decoder_start_token_id=model.generation_config.decoder_start_token_id,
    )


def as_list(value):
    """`value` as a list: None -> [], a scalar -> [value]."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def pad_batch(sequences, pad_id, left, device):
    """input_ids and attention_mask of token-id lists, padded on the left or on the right."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids.to(device), attention_mask.to(device)


def write_report(out_dir, rows, summary):
    """predictions.jsonl, summary.json and summary.md in `out_dir` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / TABLE_FILE).write_text(markdown_table(summary) + "\n", encoding="utf-8")


def markdown_table(summary):
    """One-row markdown table of an evaluation summary."""
    header = "| task | model | n | correct | accuracy | missing |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: |"
    row = (f"| {summary['task']} | {summary.get('model', '')} | {summary['n']} | {summary['correct']} "
           f"| {100 * summary['accuracy']:.2f}% | {summary['missing']} |")
    return "\n".join([header, rule, row])
