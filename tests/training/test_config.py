"""The training config: YAML onto dataclasses, overrides, and errors that name the key."""
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from mcckd import cli
from mcckd.errors import InputError
from mcckd.training.config import Config, LoraConfig, load_config
from mcckd.training.validation import CHOICES, RANGES, value_at

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
model:
  name_or_path: some/student
data:
  train: train.jsonl
"""


def test_defaults_fill_what_the_file_leaves_out(tmp_path):
    """Every key the file leaves out holds the dataclass default; the two it sets are read."""
    config = load_config(write(tmp_path, MINIMAL))
    defaults = Config()
    assert (config.model.name_or_path, config.data.train) == ("some/student", "train.jsonl")
    config.model.name_or_path, config.data.train = defaults.model.name_or_path, defaults.data.train
    assert config == defaults


def test_overrides_are_read_as_yaml_and_typed(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), [
        "train.lr=1e-5",  # YAML reads this as a string: the float field converts it
        "train.max_steps=7",
        "train.report_to=[jsonl, wandb]",
        "model.lora.r=8",  # creates the LoRA section with its defaults
        "model.lora.target_modules=[q_proj, v_proj]",
        "train.max_grad_norm=null",
    ])
    assert config.train.lr == pytest.approx(1e-5) and isinstance(config.train.lr, float)
    assert config.train.max_steps == 7
    assert config.train.report_to == ["jsonl", "wandb"]
    assert config.model.lora == LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
    assert config.train.max_grad_norm is None


def test_model_config_is_a_free_mapping(tmp_path):
    config = load_config(
        write(tmp_path, "model: {config: {model_type: llama, hidden_size: 32}}\ndata: {train: x}"),
        ["model.config.num_hidden_layers=2"],
    )
    assert config.model.config == {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2}


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (MINIMAL + "trian:\n  lr: 1\n", [], "unknown config key 'trian' (did you mean 'train'?)"),
        (MINIMAL, ["train.learning_rate=1"], "unknown config key 'train.learning_rate'"),
        (MINIMAL, ["model.lora.rank=4"], "unknown config key 'model.lora.rank'"),
        (MINIMAL, ["train.lr=fast"], "config key 'train.lr' must be a number, got 'fast'"),
        (MINIMAL, ["train.grad_accum=1.5"], "config key 'train.grad_accum' must be an integer"),
        (MINIMAL, ["train.tensorboard=yes please"], "config key 'train.tensorboard' must be true or false"),
        (MINIMAL, ["train.betas=0.9"], "config key 'train.betas' must be a list"),
        (MINIMAL, ["train.precision=fp8"], "config key 'train.precision' must be one of auto, bf16, fp32"),
        (MINIMAL, ["model.attn_backend=flash"], "config key 'model.attn_backend' must be one of"),
        (MINIMAL, ["data.num_rationales=1"], "config key 'data.num_rationales' must be at least 2"),
        (MINIMAL, ["data.max_tokens=1000"], "at least data.num_rationales x data.max_length = 2048"),
        (
            MINIMAL,
            ["model.config={model_type: llama}"],
            "config key 'model.name_or_path' or model.config must be set",
        ),
        (MINIMAL, ["model.name_or_path=null", "model.config={hidden_size: 8}"], "needs a 'model_type'"),
        ("model: {name_or_path: x}\n", [], "config key 'data.train' must name the training records"),
        (MINIMAL, ["eval.every=10"], "config key 'eval.data' must be set when eval.every > 0"),
        (MINIMAL, ["train.lr"], "--set expects KEY=VALUE"),
        ("- a\n- b\n", [], "the config must be a mapping of sections"),
        ("model: [1, 2]\n", [], "model: expected a mapping"),
    ],
)
def test_errors_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(InputError) as error:
        load_config(write(tmp_path, text), overrides)
    assert message in str(error.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match="cannot read the config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "gpu.yaml"])
def test_shipped_configs_load(name):
    config = load_config(ROOT / "configs" / name)
    assert config.data.num_rationales >= 2 and config.train.alpha > 0


def test_gpu_recipe_prepares_as_many_rationales_as_its_config_trains_on():
    """examples/train_gsm8k.sh keeps K rationales per question; configs/gpu.yaml trains on K."""
    script = (ROOT / "examples" / "train_gsm8k.sh").read_text()
    (k,) = {int(value) for value in re.findall(r"mcckd prepare .*--k (\d+)", script)}
    assert load_config(ROOT / "configs" / "gpu.yaml").data.num_rationales == k


def test_the_command_reports_config_errors(tmp_path, capsys):
    code = cli.main(["train", "--config", str(write(tmp_path, MINIMAL)), "--set", "train.warmup=3"])
    assert code == 2
    message = "mcckd: error: unknown config key 'train.warmup' (did you mean 'train.warmup_steps'?)"
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-0.001", "config key 'train.lr' must be > 0, got -0.001"),
        ("train.lr=0", "config key 'train.lr' must be > 0, got 0.0"),
        ("train.lr=nan", "config key 'train.lr' must be a finite number, got nan"),
        ("train.keep_last=-1", "config key 'train.keep_last' must be >= 0, got -1"),
        ("train.warmup_steps=-1", "config key 'train.warmup_steps' must be >= 0, got -1"),
        ("train.grad_accum=0", "config key 'train.grad_accum' must be at least 1, got 0"),
        ("train.alpha=-0.1", "config key 'train.alpha' must be >= 0, got -0.1"),
        ("train.temperature=0", "config key 'train.temperature' must be > 0, got 0.0"),
        ("train.temperature=inf", "config key 'train.temperature' must be a finite number, got inf"),
        ("train.min_lr_ratio=1.5", "config key 'train.min_lr_ratio' must be in [0, 1], got 1.5"),
        ("train.betas=[0.9, 1.0]", "config key 'train.betas' must be in [0, 1), got 1.0"),
        ("train.max_grad_norm=0", "config key 'train.max_grad_norm' must be > 0, got 0.0"),
        ("train.save_every=-5", "config key 'train.save_every' must be >= 0, got -5"),
        ("train.seed=-1", "config key 'train.seed' must be >= 0, got -1"),
        ("model.lora.dropout=1", "config key 'model.lora.dropout' must be in [0, 1), got 1.0"),
        ("model.lora.target_modules=[]", "config key 'model.lora.target_modules' must name at least one"),
        ("eval.batch_size=0", "config key 'eval.batch_size' must be at least 1, got 0"),
        ("data.max_length=0", "config key 'data.max_length' must be at least 1, got 0"),
        ("data.max_tokens=100", "config key 'data.max_tokens' must hold a whole question"),
        ("train.loss_normalization=token", "config key 'train.loss_normalization' must be one of step, "
                                            "micro_batch, got 'token'"),
        ("train.report_to=[jsonl, mlflow]", "config key 'train.report_to' must be one of jsonl, "
                                             "tensorboard, wandb, got 'mlflow'"),
        ("train.report_to=[jsonl, jsonl]", "config key 'train.report_to' lists an item twice"),
        ("train.wandb_project=''", "config key 'train.wandb_project' must name a project"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(tmp_path, override, message):
    overrides = [override, "train.report_to=[wandb]"] if "wandb_project" in override else [override]
    with pytest.raises(InputError) as error:
        load_config(write(tmp_path, MINIMAL), overrides)
    assert message in str(error.value)


@pytest.mark.parametrize("override", [
    "train.keep_last=0", "train.warmup_steps=0", "train.alpha=0", "train.min_lr_ratio=1",
    "train.betas=[0, 0.999]", "train.max_steps=null", "train.max_grad_norm=null", "model.lora.dropout=0",
    "eval.every=0"])
def test_values_on_the_edge_of_their_range_are_accepted(tmp_path, override):
    key, _, text = override.partition("=")
    config = load_config(write(tmp_path, MINIMAL), [override, "model.lora.r=4"])
    assert value_at(config, key) == yaml.safe_load(text)


def numeric_keys(cls, prefix=""):
    """Dotted names of the int, float and list-of-number fields of a config dataclass, recursively."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kind = inner[0]
        if dataclasses.is_dataclass(kind):
            keys += numeric_keys(kind, f"{prefix}{f.name}.")
        elif kind in (int, float) or typing.get_args(kind) in ((int,), (float,)):
            keys.append(prefix + f.name)
    return keys


def test_every_numeric_key_has_a_range():
    """A numeric key is range-checked in RANGES, or (checked against other keys) in `validate`."""
    checked_against_other_keys = {"data.num_rationales", "data.max_tokens"}
    missing = set(numeric_keys(Config)) - set(RANGES) - checked_against_other_keys
    assert not missing
    enumerated = {"train.precision", "train.distributed", "train.loss_normalization", "train.report_to"}
    assert enumerated <= set(CHOICES)


def test_the_heads_must_divide_the_hidden_size_as_transformers_says(tmp_path):
    text = "model: {config: {model_type: llama, hidden_size: 64, num_attention_heads: 5}}\ndata: {train: x}"
    with pytest.raises(InputError) as error:
        load_config(write(tmp_path, text))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("config keys 'model.config.hidden_size', 'model.config.num_attention_heads': ")
    assert "not a multiple of the number of attention heads (5)" in message
    with pytest.raises(InputError, match="config key 'model.config.hidden_size': .*expected int"):
        load_config(write(tmp_path, text), ["model.config.hidden_size=wide"])
    with pytest.raises(InputError, match="has no model type 'lama' \\(did you mean llama"):
        load_config(write(tmp_path, text), ["model.config.model_type=lama"])
    config = load_config(write(tmp_path, text), ["model.config.num_attention_heads=4"])
    assert config.model.config["num_attention_heads"] == 4


def test_the_older_tensorboard_key_is_read_as_report_to(tmp_path):
    assert load_config(write(tmp_path, MINIMAL), ["train.tensorboard=false"]).train.report_to == ["jsonl"]
    assert load_config(write(tmp_path, MINIMAL + "train: {tensorboard: true}\n")).train.report_to == [
        "jsonl", "tensorboard"]
    with pytest.raises(InputError, match="'train.tensorboard' and 'train.report_to' are both set"):
        load_config(write(tmp_path, MINIMAL), ["train.tensorboard=true", "train.report_to=[wandb]"])
