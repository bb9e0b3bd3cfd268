"""The checks of a training config, each failure an `InputError` that names its key: the range
of every numeric key (RANGES), the choices of every enumerated one (CHOICES), the checks that
span keys, and `model.config` through transformers' own validation."""
import difflib
import math
import re

from mcckd.data.prompts import FORMATS, prompt_problem
from mcckd.data.tasks import resolve_task
from mcckd.errors import InputError
from mcckd.models.attention import ATTENTION_BACKENDS
from mcckd.models.dtypes import DTYPES
from mcckd.training.normalization import NORMALIZATIONS
from mcckd.training.trackers import TRACKERS

# The range of every numeric key (a null value passes where the key may be null; a list's
# items are checked one by one). Enumerated keys are in CHOICES; checks that involve several
# keys are in `validate`.
BOUNDS = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "at least 1": lambda v: v >= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
}
RANGES = {
    "model.tokenizer_vocab_size": "at least 1",
    "model.lora.r": "at least 1",
    "model.lora.alpha": "> 0",
    "model.lora.dropout": "in [0, 1)",
    "data.max_length": "at least 1",
    "train.seed": ">= 0",
    "train.epochs": "> 0",
    "train.max_steps": "at least 1",
    "train.lr": "> 0",
    "train.min_lr_ratio": "in [0, 1]",
    "train.warmup_steps": ">= 0",
    "train.weight_decay": ">= 0",
    "train.betas": "in [0, 1)",
    "train.grad_accum": "at least 1",
    "train.max_grad_norm": "> 0",
    "train.alpha": ">= 0",
    "train.temperature": "> 0",
    "train.chunk_size": "at least 1",
    "train.log_every": "at least 1",
    "train.save_every": ">= 0",
    "train.keep_last": ">= 0",
    "eval.every": ">= 0",
    "eval.limit": "at least 1",
    "eval.batch_size": "at least 1",
    "eval.max_new_tokens": "at least 1",
}
CHOICES = {
    "model.attn_backend": ("auto", *ATTENTION_BACKENDS),
    "model.dtype": tuple(DTYPES),
    "data.format": FORMATS,
    "train.precision": ("auto", "bf16", "fp32"),
    "train.distributed": ("ddp", "fsdp"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.loss_normalization": NORMALIZATIONS,
    "train.report_to": tuple(TRACKERS),
}


def _require(condition, key, message):
    if not condition:
        raise InputError(f"config key '{key}' {message}")


def value_at(config, key):
    """The value of a dotted key; None when a section on the way is null (model.lora)."""
    value = config
    for part in key.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def check_ranges(config):
    """Every key of RANGES within its bound (and finite), every key of CHOICES one of them."""
    for key, bound in RANGES.items():
        value = value_at(config, key)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            _require(math.isfinite(item), key, f"must be a finite number, got {item!r}")
            _require(BOUNDS[bound](item), key, f"must be {bound}, got {item!r}")
    for key, choices in CHOICES.items():
        value = value_at(config, key)
        for item in value if isinstance(value, list) else [value]:
            _require(item in choices, key, f"must be one of {', '.join(choices)}, got {item!r}")
        _require(not isinstance(value, list) or len(set(value)) == len(value), key,
                 f"lists an item twice: {value!r}")


def check_model_config(fields):
    """`model.config` through transformers' own validation of its config class (the hidden size
    a multiple of the heads, field types, ...); the error names the keys it speaks of."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = dict(fields)
    model_type = fields.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"config key 'model.config.model_type': transformers has no model type "
                         f"{model_type!r}{hint}")
    try:
        resolved = AutoConfig.for_model(model_type, **fields)
    except Exception as error:  # transformers raises ValueError, TypeError or its strict-dataclass errors
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        message = re.sub(r"^\w+Error: ", "", lines[-1])
        named = re.findall(r"field '(\w+)'", str(error)) or [
            name for name in fields if name.replace("_", " ").removeprefix("num ") in message.lower()]
        keys = ", ".join(f"'model.config.{name}'" for name in dict.fromkeys(named)) or "'model.config'"
        raise InputError(f"config key{'s' if len(named) > 1 else ''} {keys}: {message}") from None
    # grouped-query attention: transformers checks heads against the hidden size, not this
    heads = getattr(resolved, "num_attention_heads", None)
    kv_heads = getattr(resolved, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads > 0 and heads % kv_heads:
        raise InputError(f"config key 'model.config.num_key_value_heads': {kv_heads} key/value heads must "
                         f"divide the {heads} attention heads")


def validate(config):
    """Range checks of every key (RANGES, CHOICES), then checks that span keys or values:
    each failure names its key."""
    check_ranges(config)
    model, data, train, ev = config.model, config.data, config.train, config.eval
    _require((model.name_or_path is None) != (model.config is None), "model.name_or_path",
             "or model.config must be set, not both")
    _require(model.config is None or "model_type" in model.config, "model.config",
             "needs a 'model_type' (for example llama, qwen2, t5)")
    _require(model.lora is None or len(model.lora.target_modules) > 0, "model.lora.target_modules",
             "must name at least one module")
    _require(data.train is not None, "data.train", "must name the training records (JSONL)")
    _require(data.num_rationales >= 2, "data.num_rationales",
             "must be at least 2 (the consistency loss compares pairs)")
    _require(data.max_tokens >= data.num_rationales * data.max_length, "data.max_tokens",
             f"must hold a whole question: at least data.num_rationales x data.max_length = "
             f"{data.num_rationales * data.max_length}")
    _require(prompt_problem(data.prompt) is None, "data.prompt", prompt_problem(data.prompt))
    _require(data.system is None or data.format == "chat", "data.system",
             "is the system message of data.format: chat")
    _require(len(train.betas) == 2, "train.betas", "must hold two numbers")
    _require(bool(train.wandb_project) or "wandb" not in train.report_to, "train.wandb_project",
             "must name a project when train.report_to lists wandb")
    _require(ev.every == 0 or ev.data is not None, "eval.data", "must be set when eval.every > 0")
    _require(ev.every == 0 or (ev.task or data.task) is not None, "eval.task",
             "(or data.task) must be set when eval.every > 0")
    for key, task in (("data.task", data.task), ("eval.task", ev.task)):
        if task is not None:
            resolve_task(task, f"config key '{key}'")
    _require(ev.every == 0 or train.distributed != "fsdp", "eval.every",
             "must be 0 under FSDP (evaluate the checkpoints with `mcckd eval` instead)")
    if model.config is not None:
        check_model_config(model.config)
