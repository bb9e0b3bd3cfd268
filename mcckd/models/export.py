"""Exporting a checkpoint as a standalone model folder: what vLLM, SGLang, TGI or
`from_pretrained` load as it is.

`export_checkpoint(CHECKPOINT, DIR)` writes

    config.json, model.safetensors   the weights in the dtype to serve (sharded above
                                     `max_shard_size`, with model.safetensors.index.json); a LoRA
                                     checkpoint's adapters merged into its base (peft's
                                     merge_and_unload, computed in float32)
    tokenizer files                  the checkpoint's tokenizer, with a chat template
    generation_config.json           bos/pad ids and the EOS ids training ends every target with
                                     (the tokenizer's EOS, and the base model's own), no sampling
                                     defaults: a server then stops where in-process evaluation stops

A tokenizer that has a chat template keeps it. One without (a plain-format student) gets the
training prompt as its chat template, `[BOS] "Question: {message}\\nAnswer:"` around the last
user message, so the chat-completions API of a server renders the very prompt the student was
trained on. With `merge_lora=False` a LoRA checkpoint is exported as its adapters (for a
server's LoRA support, e.g. `vllm serve BASE --enable-lora`), the base of a randomly
initialised student beside them in mcckd_base/.

The export is atomic: everything is written to a temporary folder beside DIR, fsynced, and
renamed to DIR; an existing non-empty DIR is never overwritten.
"""
import inspect
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, GenerationConfig, PreTrainedModel

from mcckd.data.prompts import PLAIN
from mcckd.data.resumable import fsync_path
from mcckd.errors import InputError
from mcckd.models.dtypes import parse_dtype
from mcckd.models.loading import (
    BASE_SUBFOLDER,
    adapter_base,
    check_checkpoint_folder,
    checkpoint_tokenizer,
    load_adapter,
    load_checkpoint,
    load_pretrained,
)

DEFAULT_MAX_SHARD_SIZE = "5GB"


def export_checkpoint(checkpoint, out, *, merge_lora=True, dtype=None, safe_serialization=True,
                      max_shard_size=DEFAULT_MAX_SHARD_SIZE):
    """Write checkpoint folder `checkpoint` (full or LoRA) as a standalone model folder `out`.

    Args:
        checkpoint: a training checkpoint folder, or any folder `load_checkpoint` reads.
        out: the folder to create; it must not exist or be empty.
        merge_lora: merge a LoRA checkpoint's adapters into its base (else export the adapters).
        dtype: the weights' dtype (a torch dtype or a name of `DTYPES`); None: the stored one.
        safe_serialization: safetensors (transformers 5 writes nothing else).
        max_shard_size: shard the weights above this size ("5GB", or bytes).

    Returns:
        The folder written, `out`.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    check_target(out)
    check_checkpoint_folder(checkpoint)
    lora = (checkpoint / "adapter_config.json").is_file()
    dtype = parse_dtype(dtype) or stored_dtype(adapter_base(checkpoint) if lora else checkpoint)
    save_options = serialization_options(safe_serialization, max_shard_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        if lora and not merge_lora:
            tokenizer = write_adapters(checkpoint, temporary, out, dtype, save_options)
            model_config = AutoConfig.from_pretrained(adapter_base(checkpoint))
        else:
            # A merge in float32 is exact; the cast to the serving dtype comes after it.
            model, tokenizer = load_checkpoint(checkpoint, dtype=torch.float32 if lora else dtype)
            model = model.to(dtype)
            model.generation_config = serving_generation_config(model, tokenizer)
            model.save_pretrained(temporary, **save_options)
            model_config = model.config
        if tokenizer.chat_template is None and not model_config.is_encoder_decoder:
            tokenizer.chat_template = prompt_chat_template(tokenizer)
        tokenizer.save_pretrained(temporary)
        fsync_tree(temporary)
        if out.exists():
            out.rmdir()  # empty, checked above
        temporary.rename(out)
        fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out


def check_target(out):
    """InputError unless `out` is absent or an empty folder."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {out}: the folder is not empty; export to a new folder")


def stored_dtype(folder):
    """The dtype a model folder's weights are stored in (its config's), float32 if unknown."""
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise InputError(f"{folder}: cannot read the model config: {error}") from error
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def serialization_options(safe_serialization, max_shard_size):
    """save_pretrained's keyword arguments; transformers 5 writes safetensors only."""
    options = {"max_shard_size": max_shard_size}
    if "safe_serialization" in inspect.signature(PreTrainedModel.save_pretrained).parameters:
        options["safe_serialization"] = safe_serialization
    elif not safe_serialization:
        raise InputError("--no-safe-serialization: this version of transformers writes safetensors only")
    return options


def eos_token_ids(generation_config, tokenizer):
    """The ids that end a generation, sorted: the tokenizer's EOS (training ends every target
    with it) and the EOS ids of the model's own generation config."""
    stop = [tokenizer.eos_token_id, *as_list(generation_config.eos_token_id)]
    return sorted({token for token in stop if token is not None})


def serving_generation_config(model, tokenizer):
    """A generation config with the special ids only (no sampling defaults for a server to
    apply): bos, pad, decoder start and every EOS id of `eos_token_ids`."""
    config, generation = model.config, model.generation_config
    stop = eos_token_ids(generation, tokenizer)
    return GenerationConfig(
        bos_token_id=first_set(tokenizer.bos_token_id, config.bos_token_id),
        eos_token_id=stop[0] if len(stop) == 1 else stop or None,
        pad_token_id=first_set(tokenizer.pad_token_id, generation.pad_token_id),
        decoder_start_token_id=generation.decoder_start_token_id if config.is_encoder_decoder else None,
    )


def first_set(*values):
    """The first value that is not None (None if all are)."""
    return next((value for value in values if value is not None), None)


def prompt_chat_template(tokenizer, prompt_format=PLAIN):
    """A Jinja chat template that renders the training prompt of a plain `prompt_format` around
    the last message's content, BOS first when the tokenizer has one: the prompt of a
    decoder-only student as `mcckd.data.prompts` builds it."""
    before, after = (json.dumps(part) for part in prompt_format.prompt_text("{question}").split("{question}"))
    bos = "{{ bos_token }}" if tokenizer.bos_token is not None else ""
    # JSON string literals are Jinja string literals: the prompt's text stays literal.
    return bos + "{{ " + before + " }}{{ messages[-1]['content'] }}{{ " + after + " }}"


def write_adapters(checkpoint, folder, final, dtype, save_options):
    """A LoRA checkpoint's adapters (in `dtype`) into `folder`, with its base beside them in
    mcckd_base/ when the checkpoint holds it; the adapter config then names the base's final
    place. Returns the tokenizer."""
    base = adapter_base(checkpoint)
    tokenizer = checkpoint_tokenizer(checkpoint, base)
    base_model = load_pretrained(base, dtype)
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8"))
    if isinstance(base, Path) and base.name == BASE_SUBFOLDER:
        base_model.generation_config = serving_generation_config(base_model, tokenizer)
        base_model.save_pretrained(folder / BASE_SUBFOLDER, **save_options)  # before peft wraps it
        adapter_config["base_model_name_or_path"] = str((final / BASE_SUBFOLDER).resolve())
    load_adapter(base_model, checkpoint).to(dtype).save_pretrained(folder)
    written = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    written["base_model_name_or_path"] = adapter_config.get("base_model_name_or_path")
    (folder / "adapter_config.json").write_text(json.dumps(written, indent=2), encoding="utf-8")
    return tokenizer


def fsync_tree(folder):
    """Make every file and folder under `folder` durable."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_path(root)


def as_list(value):
    """`value` as a list: None -> [], a scalar -> [value]."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
