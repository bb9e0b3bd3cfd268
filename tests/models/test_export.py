"""mcckd export: the exported folder loads with from_pretrained as it is and gives the logits of
the model that training left, for a full run and a LoRA run (merged or not), in the chosen dtype
and shards; it never overwrites and never leaves half a folder."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mcckd.cli import main
from mcckd.data import Record, write_records
from mcckd.data.prompts import encode
from mcckd.data.tokenize import encode_prompt
from mcckd.errors import InputError
from mcckd.models import export as export_module
from mcckd.models.export import export_checkpoint
from mcckd.models.loading import load_checkpoint
from mcckd.training.config import load_config
from mcckd.training.loop import train

QUESTION = "Ana has 3 pens and gets 4 more. How many pens now?"
STEPS = 3


def addition_records(n=8):
    """Addition questions with three rationales each."""
    records = []
    for i in range(n):
        a, b = 2 + i, 3 + 2 * i
        rationales = [f"She has {a} and gets {b}, so {a} + {b} = {a + b}.",
                      f"Adding {b} to {a} gives {a + b}.", f"{b} plus {a} makes {a + b}."]
        records.append(Record(f"q{i}", "svamp", f"Ana has {a} pens and gets {b} more. How many pens now?",
                              str(a + b), rationales))
    return records


def probe_ids(tokenizer):
    """A prompt and the start of an answer: the tokens whose logits the tests compare."""
    return torch.tensor([encode_prompt(tokenizer, QUESTION) + encode(tokenizer, " She has 3 and gets 4")])


def trained_run(folder, lora):
    """Train a tiny random Llama for STEPS steps; returns (final checkpoint, the logits of the
    model the loop trained, on `probe_ids`, taken at the last step in eval mode)."""
    records_path = folder / "train.jsonl"
    write_records(records_path, addition_records())
    tree = {
        "model": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "max_position_embeddings": 128},
                  "tokenizer_vocab_size": 300, "attn_backend": "sdpa"},
        "data": {"train": str(records_path), "task": "svamp", "num_rationales": 3, "max_length": 96,
                 "max_tokens": 384},
        "train": {"out_dir": str(folder / "run"), "device": "cpu", "lr": 1e-2, "max_steps": STEPS,
                  "tensorboard": False, "progress_bar": False},
        "eval": {"data": str(records_path), "every": STEPS},
    }
    if lora:
        tree["model"]["lora"] = {"r": 4, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    config_path = folder / "run.yaml"
    config_path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    seen = {}

    def capture(model, tokenizer, step):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            seen["logits"] = model(probe_ids(tokenizer)).logits
        model.train(was_training)
        return {}

    result = train(load_config(config_path), evaluate=capture)
    return result["checkpoint"], seen["logits"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("full"), lora=False)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("lora"), lora=True)


def logits_of(folder, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return model(probe_ids(tokenizer)).logits, model, tokenizer


def export_in_float32(run, out):
    """`mcckd export` of a run's checkpoint; asserts that from_pretrained of the folder gives the
    logits of the model training left."""
    checkpoint, trained = run
    assert main(["export", str(checkpoint), "--out", str(out), "--dtype", "float32"]) == 0
    logits, _, _ = logits_of(out)
    torch.testing.assert_close(logits, trained, atol=1e-5, rtol=1e-5)
    return out


def test_full_run_exports_the_trained_model(full_run, tmp_path):
    out = export_in_float32(full_run, tmp_path / "export")
    names = {path.name for path in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not names & {"optimizer.pt", "training_state.pt", "rng_state_0.pt"}
    assert not list(tmp_path.glob(".tmp-*"))


def test_lora_run_exports_its_adapters_merged(lora_run, tmp_path):
    checkpoint, trained = lora_run
    out = export_in_float32(lora_run, tmp_path / "export")
    assert not any("lora" in name for name in load_file(out / "model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(checkpoint / "mcckd_base").eval()
    with torch.no_grad():
        base_logits = base(probe_ids(AutoTokenizer.from_pretrained(out))).logits
    assert (base_logits - trained).abs().max() > 1e-3  # the adapters changed something: the merge counts


def test_lora_adapters_can_be_exported_unmerged(lora_run, tmp_path):
    checkpoint, trained = lora_run
    out = tmp_path / "adapters"
    assert main(["export", str(checkpoint), "--out", str(out), "--no-merge-lora"]) == 0
    assert (out / "adapter_model.safetensors").is_file() and (out / "mcckd_base" / "config.json").is_file()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((out / "mcckd_base").resolve())
    model, tokenizer = load_checkpoint(out)
    with torch.no_grad():
        torch.testing.assert_close(model(probe_ids(tokenizer)).logits, trained, atol=1e-5, rtol=1e-5)


def test_bfloat16_export_holds_the_cast_weights(lora_run, tmp_path):
    checkpoint, trained = lora_run
    full = export_checkpoint(checkpoint, tmp_path / "fp32", dtype="float32")
    half = export_checkpoint(checkpoint, tmp_path / "bf16", dtype="bfloat16")
    exact, cast = load_file(full / "model.safetensors"), load_file(half / "model.safetensors")
    assert exact.keys() == cast.keys()
    for name, weight in exact.items():
        assert cast[name].dtype == torch.bfloat16
        assert torch.equal(cast[name], weight.to(torch.bfloat16)), name
    logits, model, _ = logits_of(half, dtype="auto")
    assert model.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), trained, atol=0.1, rtol=0.05)


def test_weights_above_the_shard_size_are_sharded(full_run, tmp_path):
    checkpoint, trained = full_run
    out = export_checkpoint(checkpoint, tmp_path / "sharded", max_shard_size="40KB")
    shards = sorted(path.name for path in out.glob("model-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    logits, _, _ = logits_of(out)
    torch.testing.assert_close(logits, trained, atol=1e-5, rtol=1e-5)


def test_generation_config_stops_where_training_ends_and_samples_nothing(full_run, tmp_path):
    checkpoint, _ = full_run
    out = export_checkpoint(checkpoint, tmp_path / "export")
    tokenizer = AutoTokenizer.from_pretrained(out)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("</s>")
    assert generation["bos_token_id"] == tokenizer.bos_token_id
    assert not {"temperature", "top_p", "top_k", "do_sample"} & set(generation)


def test_chat_template_renders_the_training_prompt(full_run, tmp_path):
    checkpoint, _ = full_run
    out = export_checkpoint(checkpoint, tmp_path / "export")
    tokenizer = AutoTokenizer.from_pretrained(out)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(rendered) == encode_prompt(tokenizer, QUESTION)


def test_a_chat_template_of_the_tokenizer_is_kept(full_run, tmp_path):
    checkpoint, _ = full_run
    template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    staged = tmp_path / "checkpoint"
    model, tokenizer = load_checkpoint(checkpoint)
    tokenizer.chat_template = template
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    out = export_checkpoint(staged, tmp_path / "export")
    assert AutoTokenizer.from_pretrained(out).chat_template == template


def test_a_non_empty_folder_is_never_overwritten(full_run, tmp_path, capsys):
    checkpoint, _ = full_run
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()  # an empty folder is fine
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    assert (out / "config.json").is_file()


def test_a_failed_export_leaves_nothing(full_run, tmp_path, monkeypatch):
    checkpoint, _ = full_run

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "fsync_tree", broken)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(checkpoint, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a checkpoint folder|cannot read the model config"):
        export_checkpoint(tmp_path, tmp_path / "export")


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--merge-lora", "--no-merge-lora", "--dtype", "--safe-serialization",
                   "--max-shard-size", "bfloat16"):
        assert option in text


def test_the_base_models_own_eos_ids_are_kept(full_run, tmp_path):
    """A base model that stops on several ids (Qwen: <|im_end|> and <|endoftext|>) keeps them
    all beside the tokenizer's EOS, as in-process greedy decoding does."""
    from mcckd.evaluation.generation import greedy_config, padding_id

    checkpoint, _ = full_run
    model, tokenizer = load_checkpoint(checkpoint)
    model.generation_config.eos_token_id = [7, tokenizer.eos_token_id]
    model.generation_config.temperature, model.generation_config.do_sample = 0.7, True
    staged = tmp_path / "checkpoint"
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    out = export_checkpoint(staged, tmp_path / "export")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == sorted({7, tokenizer.eos_token_id})
    assert "temperature" not in generation and not generation.get("do_sample")
    exported, exported_tokenizer = load_checkpoint(out)
    in_process = greedy_config(model, tokenizer, 8, padding_id(tokenizer)).eos_token_id
    assert greedy_config(exported, exported_tokenizer, 8, padding_id(tokenizer)).eos_token_id == in_process
