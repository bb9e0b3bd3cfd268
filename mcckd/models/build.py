"""The student a training run starts from: pretrained, random with an on-the-fly tokenizer, or
resumed from a checkpoint (full weights, or LoRA adapters onto their base)."""
import torch
from transformers import AutoConfig, AutoTokenizer

from mcckd.data.records import record_texts
from mcckd.errors import InputError
from mcckd.models.attention import resolve_attention_backend
from mcckd.models.compile import compile_decoder_layers
from mcckd.models.liger import apply_liger_kernels
from mcckd.models.loading import BASE_SUBFOLDER, load_adapters
from mcckd.models.student import apply_lora, load_student
from mcckd.models.word_tokenizer import train_word_tokenizer
from mcckd.models.wrappers import causal_lm


def build_student(config, records, device, resume_from, out_dir, rank):
    """(Student, base_folder): the model and tokenizer to train, weights from `resume_from` if set.

    A pretrained student loads from model.name_or_path; a random one is built from model.config
    with a tokenizer trained on the records (or model.tokenizer). Resuming, full weights and the
    tokenizer come from the checkpoint; LoRA adapters are loaded onto the base. base_folder:
    where the base of a random student under LoRA is saved (checkpoints copy it), else None.
    """
    m = config.model
    lora = (
        None
        if m.lora is None
        else {
            "r": m.lora.r,
            "lora_alpha": m.lora.alpha,
            "lora_dropout": m.lora.dropout,
            "target_modules": list(m.lora.target_modules),
        }
    )
    try:
        resolve_attention_backend(m.attn_backend, device)
    except ValueError as error:
        raise InputError(f"config key 'model.attn_backend': {error}") from None
    options = {"dtype": m.dtype, "attn_backend": m.attn_backend, "device": device}
    base_folder = out_dir / BASE_SUBFOLDER if m.config is not None and lora is not None else None
    if resume_from is not None and lora is None:
        student = load_student(str(resume_from), **options)
    elif resume_from is not None:
        student = load_student(
            str(base_folder or m.name_or_path), tokenizer=str(resume_from), lora=lora, **options
        )
        load_adapters(student.model, resume_from)
    elif m.config is not None:
        tokenizer = (pretrained_tokenizer(m.tokenizer) if m.tokenizer
                     else train_word_tokenizer(record_texts(records), m.tokenizer_vocab_size))
        student = load_student(random_config(m.config, tokenizer), tokenizer=tokenizer, **options)
        if lora is not None:
            if rank == 0:
                student.model.save_pretrained(base_folder)
            try:
                student = student._replace(model=apply_lora(student.model, lora))
            except ValueError as error:  # peft: no module of the model matches target_modules
                raise InputError(f"config key 'model.lora.target_modules': {error}") from None
    else:
        try:
            student = load_student(m.name_or_path, tokenizer=m.tokenizer, lora=lora, **options)
        except (OSError, ValueError) as error:
            raise InputError(
                f"config key 'model.name_or_path': cannot load {m.name_or_path!r}: {error}"
            ) from None
    if student.tokenizer is None:
        raise InputError("config key 'model.tokenizer' is needed: the student has no tokenizer beside it")
    if m.gradient_checkpointing:
        enable_activation_checkpointing(causal_lm(student.model))
    speed_up(student.model, config, device)
    return student, base_folder


def speed_up(model, config, device):
    """The optional fast paths: Liger's layer kernels (`model.liger`), then regional
    compilation of the decoder layers (`train.compile`), over the patched layers."""
    if config.model.liger:
        if torch.device(device).type != "cuda":
            raise InputError("config key 'model.liger' needs a CUDA device: Liger's kernels run on GPUs only")
        apply_liger_kernels(model)
    if config.train.compile:
        compile_decoder_layers(model)


def pretrained_tokenizer(source):
    """The tokenizer `model.tokenizer` names (a folder, or a hub name in the local cache)."""
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise InputError(f"config key 'model.tokenizer': cannot load {source!r}: {error}") from None


def enable_activation_checkpointing(model):
    """Recompute each block's activations in the backward (non-reentrant: kwargs pass through).

    transformers 5.24 renamed gradient_checkpointing_enable; older versions have only that."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def random_config(fields, tokenizer):
    """A transformers config from `model.config`, its vocabulary and special ids the tokenizer's."""
    fields = dict(fields)
    fields.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model_type = fields.pop("model_type")
    if model_type in ("t5", "mt5"):
        fields.setdefault("decoder_start_token_id", tokenizer.pad_token_id)
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError) as error:
        raise InputError(f"config key 'model.config': {error}") from None
