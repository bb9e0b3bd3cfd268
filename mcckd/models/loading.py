"""Loading a checkpoint folder for evaluation or inference: a full model, or a LoRA adapter on
its base (merged), with its tokenizer. The folder layout is described in
`mcckd.training.checkpoint`."""
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from mcckd.errors import InputError
from mcckd.models.dtypes import parse_dtype

# The subfolder of a LoRA checkpoint that holds its randomly initialised base (a full model).
BASE_SUBFOLDER = "mcckd_base"


def load_checkpoint(path, *, device="cpu", dtype=torch.float32):
    """(model, tokenizer) of a checkpoint folder, in eval mode on `device`.

    A full model (`config.json` + safetensors) loads as it is. A LoRA adapter
    (`adapter_config.json`) loads onto its base model, taken from the `mcckd_base/` subfolder
    when there is one, else from the adapter's `base_model_name_or_path`, and is merged into
    it: generation then runs at the base model's speed. The tokenizer is the checkpoint's own,
    else the base model's.
    """
    path = Path(path)
    check_checkpoint_folder(path)
    if (path / "adapter_config.json").is_file():
        base = adapter_base(path)
        model = load_pretrained(base, dtype)
        model = load_adapter(model, path).merge_and_unload()
    else:
        base = path
        model = load_pretrained(path, dtype)
    return model.to(device).eval(), checkpoint_tokenizer(path, base)


def check_checkpoint_folder(path: Path) -> None:
    """InputError unless `path` is a model folder (config.json) or LoRA adapters (adapter_config.json)."""
    if not ((path / "adapter_config.json").is_file() or (path / "config.json").is_file()):
        raise InputError(f"{path}: not a checkpoint folder (no config.json or adapter_config.json)")


def checkpoint_tokenizer(path, base):
    """The tokenizer of checkpoint folder `path`: its own, else its base model's."""
    source = path if has_tokenizer(path) else base
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise InputError(f"{source}: cannot load the tokenizer: {error}") from error


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


def load_adapters(model, folder):
    """Load the LoRA adapter weights of a checkpoint folder into a peft model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(Path(folder) / "adapter_model.safetensors"))
