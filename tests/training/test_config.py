"""The training config: YAML onto dataclasses, overrides, and errors that name the key."""
import re
from pathlib import Path

import pytest

from mcckd import cli
from mcckd.errors import InputError
from mcckd.training.config import Config, LoraConfig, load_config

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
        "train.tensorboard=false",
        "model.lora.r=8",  # creates the LoRA section with its defaults
        "model.lora.target_modules=[q_proj, v_proj]",
        "train.max_grad_norm=null",
    ])
    assert config.train.lr == pytest.approx(1e-5) and isinstance(config.train.lr, float)
    assert config.train.max_steps == 7
    assert config.train.tensorboard is False
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
        (MINIMAL, ["train.precision=fp8"], "config key 'train.precision' must be auto, bf16 or fp32"),
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
