"""Loading a student: a Hugging Face causal or sequence-to-sequence LM, its tokenizer, LoRA."""
from typing import NamedTuple

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
)

from mcckd.models.attention import resolve_attention_backend, set_attention_backend
from mcckd.models.dtypes import parse_dtype


class Student(NamedTuple):
    """What `load_student` returns."""

    model: torch.nn.Module  # a transformers model, wrapped by peft under LoRA
    tokenizer: object  # its tokenizer, or None for a model built from a bare config


def load_student(
    source: str | PretrainedConfig,
    *,
    tokenizer=None,
    dtype: str | torch.dtype | None = None,
    attn_backend: str = "auto",
    lora: dict | None = None,
    device: str | torch.device | None = None,
) -> Student:
    """A transformers student and its tokenizer.

    Args:
        source: a local folder, a hub name already in the local cache, or a `PretrainedConfig`
            (random initialisation).
        tokenizer: a tokenizer or a path; default: the one stored with `source` (None for a
            config).
        dtype: the weights' dtype (a torch dtype or one of `DTYPES`' names; None: the default).
        attn_backend: "auto" or one of `ATTENTION_BACKENDS`, resolved for `device`. Decoder-only
            models (Llama, Qwen2, Mistral, ...) get it; encoder-decoder models (T5) keep their
            own attention and train on padded batches.
        lora: None, or peft `LoraConfig` arguments (r, lora_alpha, lora_dropout,
            target_modules, ...): the base is frozen and only the adapters train.
        device: default CUDA when present, else the CPU.

    Returns:
        Student(model, tokenizer), the model on `device`.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(dtype)
    if isinstance(source, PretrainedConfig):
        auto = AutoModelForSeq2SeqLM if source.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_config(source, dtype=dtype)
    else:
        config = AutoConfig.from_pretrained(source)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(source, dtype=dtype)
        tokenizer = source if tokenizer is None else tokenizer
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if not model.config.is_encoder_decoder:
        set_attention_backend(model, resolve_attention_backend(attn_backend, device))
    model.to(device)
    if lora is not None:
        model = apply_lora(model, lora)
    return Student(model, tokenizer)


def apply_lora(model, lora):
    """Wrap `model` with peft LoRA adapters; `lora` holds peft LoraConfig arguments."""
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    return get_peft_model(model, LoraConfig(task_type=task, **lora))
