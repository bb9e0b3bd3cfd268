"""Training configuration: YAML mapped onto dataclasses with defaults, overridable key by key.

    config = load_config("configs/gpu.yaml", overrides=["train.lr=1e-5", "model.lora.r=8"])

A YAML file holds the sections `model`, `data`, `train` and `eval`; every key it leaves out
keeps its default. An override `a.b=c` sets one key, its value read as YAML (`null`, `true`,
`[q_proj, v_proj]`). An unknown key, a value of the wrong type or out of its range, or a
`model.config` that transformers rejects raises `InputError` naming the key. Relative paths are
relative to the working directory. The older `train.tensorboard: true/false` is read as
`train.report_to` with or without tensorboard.
"""
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field

import yaml

from mcckd.data.prompts import ANSWER_SENTENCE
from mcckd.errors import InputError
from mcckd.training.validation import validate


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the student's linear layers; the base stays frozen."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class ModelConfig:
    """The student: a pretrained model (`name_or_path`) or a random one (`config`)."""

    name_or_path: str | None = None  # a local folder or a hub name in the local cache
    config: dict | None = None  # transformers config fields, with `model_type`: random init
    tokenizer: str | None = None  # default: the one beside name_or_path; for `config`, trained
    tokenizer_vocab_size: int = 512  # the on-the-fly tokenizer's size (random students only)
    dtype: str = "float32"  # the weights' storage dtype
    attn_backend: str = "auto"  # auto or one of ATTENTION_BACKENDS (decoder-only students)
    gradient_checkpointing: bool = False
    liger: bool = False  # Liger-Kernel's RMSNorm, SwiGLU and RoPE kernels (CUDA; pip install -e ".[liger]")
    lora: LoraConfig | None = None


@dataclass
class DataConfig:
    """Prepared records (canonical JSONL, `mcckd prepare`) and how they become batches."""

    train: str | None = None  # JSON(L), CSV, parquet, a save_to_disk folder, or hf:NAME[:CONFIG]
    # a built-in task (gsm8k, svamp, asdiv, csqa, strategyqa), a task file, or a task mapping
    # {name, kind, ...} (mcckd.data.tasks); default: each record's own built-in task
    task: str | dict | None = None
    num_rationales: int = 4  # K: rationales per question (the first K of each record)
    max_tokens: int = 4096  # token budget of one micro-batch
    max_length: int = 512  # longest tokenised rationale kept (prompt + target)
    # the prompt format (mcckd.data.prompts), for training and evaluation alike
    format: str = "plain"  # plain, or chat: the student tokenizer's chat template
    prompt: str | None = None  # with {question}; default "Question: {question}\nAnswer:" / "{question}"
    answer_sentence: str = ANSWER_SENTENCE  # what precedes the answer in every target
    system: str | None = None  # the system message of the chat format
    # the input's fields, when its layout is not recognised (mcckd.data.records), and its split
    question_field: str | None = None
    answer_field: str | None = None
    rationales_field: str | None = None
    split: str | None = None  # of a saved or hf: dataset with several


@dataclass
class TrainConfig:
    """The optimisation, its schedule, and what the run writes."""

    out_dir: str = "runs/mcckd"
    seed: int = 0
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    lr: float = 2e-5
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_accum: int = 1  # micro-batches per optimizer step on each process
    max_grad_norm: float | None = 1.0
    alpha: float = 0.1  # weight of the consistency (KL) term; 0 = plain CE (Std-CoT)
    temperature: float = 1.0
    chunk_size: int | None = None  # tokens per chunk of the fused loss (None: its default)
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16", "fp32"
    compile: bool = False  # torch.compile each decoder layer on its own (regional compilation)
    distributed: str = "ddp"  # "ddp" or "fsdp" (FSDP2 fully_shard), under torchrun
    device: str = "auto"  # "auto", "cpu", "cuda"
    loss_normalization: str = "step"  # "step": CE and KL means over the whole step; "micro_batch"
    log_every: int = 10
    save_every: int = 500  # 0: only at the end
    keep_last: int = 2  # checkpoints kept on disk (0: all)
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])  # and/or "wandb"
    wandb_project: str = "mcckd"
    progress_bar: bool = True


@dataclass
class EvalConfig:
    """Periodic evaluation on held-out records (greedy generation, answer accuracy)."""

    data: str | None = None  # as data.train: a file, a save_to_disk folder or hf:NAME[:CONFIG]
    task: str | dict | None = None  # as data.task; default: data.task
    question_field: str | None = None  # as data.question_field, for eval.data
    answer_field: str | None = None
    split: str | None = None
    every: int = 0  # steps between evaluations, and one after the last step (0: none)
    limit: int | None = None  # evaluate the first `limit` records only
    batch_size: int = 16
    max_new_tokens: int = 256


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path=None, overrides=()):
    """Config from a YAML file (or the defaults when path is None) and `key=value` overrides."""
    data = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as error:
            raise InputError(f"{path}: cannot read the config: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise InputError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: the config must be a mapping of sections, got {type(data).__name__}")
    for override in overrides:
        apply_override(data, override)
    migrate_tensorboard_key(data)
    config = build(Config, data, "")
    validate(config)
    return config


def apply_override(data, override):
    """Set `a.b.c=value` in the nested dict `data`; the value is read as YAML."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise InputError(f"--set expects KEY=VALUE (for example train.lr=1e-5), got {override!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"--set {key}: the value is not valid YAML: {error}") from None
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def migrate_tensorboard_key(data):
    """`train.tensorboard: true/false` (before train.report_to) as report_to with or without it."""
    train = data.get("train")
    if not isinstance(train, dict) or "tensorboard" not in train:
        return
    tensorboard = train.pop("tensorboard")
    if not isinstance(tensorboard, bool):
        raise InputError(f"config key 'train.tensorboard' must be true or false, got {tensorboard!r}")
    if "report_to" in train:
        raise InputError("config keys 'train.tensorboard' and 'train.report_to' are both set: "
                         "list tensorboard in train.report_to only")
    train["report_to"] = ["jsonl", "tensorboard"] if tensorboard else ["jsonl"]


def build(cls, data, prefix):
    """Instance of dataclass `cls` from a dict, checking every key and value type."""
    if not isinstance(data, dict):
        raise InputError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            known = ", ".join(prefix + name for name in names)
            raise InputError(f"unknown config key '{prefix}{key}'{hint}; known keys: {known}")
        values[key] = convert(value, hints[key], f"{prefix}{key}")
    return cls(**values)


def convert(value, annotation, key):
    """`value` checked against the type `annotation` (ints widen to floats, strings to numbers)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # str | dict: the value keeps the type it has, when it is one of them
            matching = [a for a in inner if isinstance(value, typing.get_origin(a) or a)]
            if not matching:
                names = {str: "a string", dict: "a mapping", int: "an integer", float: "a number"}
                kinds = " or ".join(names.get(a, str(a)) for a in inner)
                raise InputError(f"config key '{key}' must be {kinds}, got {value!r}")
            inner = matching
        return convert(value, inner[0], key)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, {} if value is None else value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"config key '{key}' must be a list, got {value!r}")
        return [convert(item, args[0], key) for item in value]
    if annotation is dict:
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}' must be a mapping, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        return to_number(value, annotation, key)
    if not isinstance(value, str):
        raise InputError(f"config key '{key}' must be a string, got {value!r}")
    return value


def to_number(value, kind, key):
    """int or float from a number or its text (YAML reads `1e-5` as a string)."""
    if isinstance(value, bool):
        raise InputError(f"config key '{key}' must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"config key '{key}' must be a number, got {value!r}") from None
    if isinstance(value, (int, float)):
        if kind is int and value != int(value):
            raise InputError(f"config key '{key}' must be an integer, got {value!r}")
        return kind(value)
    raise InputError(f"config key '{key}' must be a number, got {value!r}")
