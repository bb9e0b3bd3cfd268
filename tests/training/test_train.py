"""The training loop: the loss falls, alpha = 0 is plain CE, exact resume after SIGKILL, several
processes agree with one, T5 and LoRA students, what a run writes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from mcckd.data import Record, write_records
from mcckd.data.stream import MicroBatches
from mcckd.errors import InputError
from mcckd.models.loading import BASE_SUBFOLDER
from mcckd.models.loading import load_checkpoint as load_for_eval
from mcckd.models.student import load_student
from mcckd.training.checkpoint import checkpoint_path, latest_checkpoint
from mcckd.training.config import load_config
from mcckd.training.loop import train

NAMES = ["Tom", "Ana", "Lee", "Mia"]


def synthetic_records(n=16):
    """Addition questions, three differently worded rationales each (two for the last one)."""
    records = []
    for i in range(n):
        a, b, name = 2 + i % 7, 3 + (5 * i) % 11, NAMES[i % 4]
        total = a + b
        rationales = [f"{name} has {a} and gets {b}, so {a} + {b} = {total}.",
                      f"Adding {b} to {a} gives {total}.",
                      f"{b} plus {a} makes {total} in all."]
        records.append(Record(f"q{i}", "svamp", f"{name} has {a} pens and gets {b} more. How many pens now?",
                              str(total), rationales[:2] if i == n - 1 else rationales))
    return records


@pytest.fixture(scope="module")
def records_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_records(path, synthetic_records())
    return path


def settings(records_path, out_dir, **train):
    """A tiny run's config as nested dicts: random Llama student, CPU, fp32."""
    return {
        "model": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "max_position_embeddings": 128},
                  "tokenizer_vocab_size": 300, "attn_backend": "sdpa"},
        "data": {"train": str(records_path), "task": "svamp", "num_rationales": 3, "max_length": 128,
                 "max_tokens": 512},
        "train": {"out_dir": str(out_dir), "device": "cpu", "lr": 3e-3, "log_every": 1, "max_steps": 4,
                  "tensorboard": False, "progress_bar": False, **train},
    }


def config_of(tree, tmp_path, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def weights(folder, name="model.safetensors"):
    return load_file(folder / name)


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


def test_the_loss_falls_and_the_run_writes_its_files(records_path, tmp_path):
    out = tmp_path / "run"
    tree = settings(records_path, out, max_steps=60, warmup_steps=3, save_every=20, keep_last=2, lr=1e-2,
                    tensorboard=True, alpha=0.5)
    tree["eval"] = {"data": str(records_path), "every": 60, "limit": 4, "max_new_tokens": 8}
    result = train(load_config(config_of(tree, tmp_path)))
    logged = metrics(out)
    steps = [m for m in logged if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 61))
    assert steps[-1]["loss"] < 0.4 * steps[0]["loss"]
    for m in steps:
        assert m["loss"] == pytest.approx(m["ce"] + 0.5 * m["kl"], rel=1e-5)
        assert m["kl"] >= 0 and m["tokens_per_s"] > 0 and m["peak_mem_mb"] > 0 and m["grad_norm"] > 0
    assert steps[0]["lr"] == pytest.approx(1e-2 / 3) and steps[2]["lr"] == pytest.approx(1e-2)
    (evaluation,) = [m for m in logged if "eval_accuracy" in m]
    assert evaluation["step"] == 60 and evaluation["eval_n"] == 4 and 0 <= evaluation["eval_accuracy"] <= 1
    assert result["checkpoint"] == checkpoint_path(out, 60) == latest_checkpoint(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000040", "step-000060"]
    files = {p.name for p in result["checkpoint"].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_state.pt", "optimizer.pt",
            "rng_state_0.pt"} <= files
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(out / "config.yaml").train.alpha == 0.5
    model, tokenizer = load_for_eval(result["checkpoint"])
    assert tokenizer("Tom has 2 pens")["input_ids"] and model.config.model_type == "llama"


def test_alpha_zero_is_plain_cross_entropy(records_path, tmp_path):
    """alpha = 0 trains exactly as token-mean CE over each sequence run on its own."""
    out = tmp_path / "run"
    config = load_config(
        config_of(
            settings(
                records_path,
                out,
                alpha=0.0,
                max_steps=3,
                grad_accum=2,
                min_lr_ratio=1.0,
                max_grad_norm=None,
                lr=1e-3,
            ),
            tmp_path,
        )
    )
    trained = weights(train(config)["checkpoint"])

    student = load_student(str(checkpoint_path(out, 3)), device="cpu")  # for its tokenizer and config
    torch.manual_seed(config.train.seed)  # the run's initialisation
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint_path(out, 3)),
                                             attn_implementation="sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    micro_batches = MicroBatches(config, list(synthetic_records()), student.tokenizer)
    for step in range(3):
        for batch in micro_batches.for_step(step):
            logits = torch.cat(
                [
                    model(input_ids=batch.input_ids[start:end][None]).logits[0]
                    for start, end in zip(batch.cu_seqlens[:-1].tolist(), batch.cu_seqlens[1:].tolist())
                ]
            )
            (F.cross_entropy(logits, batch.labels, ignore_index=-100) / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
    plain = {k: v for k, v in model.state_dict().items() if k in trained}
    assert_same_weights(trained, plain, exact=False)


def run_command(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigkill_then_resume_gives_the_same_weights(records_path, tmp_path):
    tree = settings(records_path, tmp_path / "whole", max_steps=24, save_every=4, keep_last=2, warmup_steps=4)
    tree["model"]["lora"] = None
    whole = run_command(["-m", "mcckd", "train", "--config", str(config_of(tree, tmp_path, "whole.yaml"))])
    tree["train"]["out_dir"] = str(tmp_path / "killed")
    killed_config = config_of(tree, tmp_path, "killed.yaml")
    killed = run_command(["-m", "mcckd", "train", "--config", str(killed_config)])
    while not checkpoint_path(tmp_path / "killed", 8).exists() and killed.poll() is None:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read()
    stopped_at = int(latest_checkpoint(tmp_path / "killed").name.removeprefix("step-"))
    assert 8 <= stopped_at < 24
    resumed = run_command(["-m", "mcckd", "train", "--config", str(killed_config), "--resume"])
    assert resumed.wait() == 0, resumed.stderr.read()
    assert whole.wait() == 0, whole.stderr.read()
    final = checkpoint_path(tmp_path / "whole", 24)
    assert_same_weights(weights(final), weights(checkpoint_path(tmp_path / "killed", 24)))
    # the log holds each step once, with the values of the run never stopped (timings aside)
    whole_log, killed_log = metrics(tmp_path / "whole"), metrics(tmp_path / "killed")
    assert [m["step"] for m in killed_log] == list(range(1, 25))
    assert whole_log == [{**k, "tokens_per_s": w["tokens_per_s"], "peak_mem_mb": w["peak_mem_mb"]}
                         for k, w in zip(killed_log, whole_log)]


def torchrun(config_path, *args):
    return run_command(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "mcckd", "train", "--config", str(config_path), *args])


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_processes_reproduce_one(records_path, tmp_path, distributed):
    """2 gloo processes with 1 micro-batch each = 1 process accumulating 2: the same steps;
    and the 2 processes resume from their checkpoint exactly."""
    tree = settings(records_path, tmp_path / "two", max_steps=3, distributed=distributed, warmup_steps=1,
                    save_every=2, keep_last=0)
    two_config = config_of(tree, tmp_path, "two.yaml")
    two = torchrun(two_config)
    tree["train"].update(out_dir=str(tmp_path / "one"), grad_accum=2)
    train(load_config(config_of(tree, tmp_path, "one.yaml")))
    assert two.wait() == 0, two.stderr.read()
    one_log, two_log = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for key in ("loss", "ce", "kl", "grad_norm", "lr"):
        assert [m[key] for m in two_log] == pytest.approx([m[key] for m in one_log], rel=1e-5, abs=1e-7)
    final = weights(checkpoint_path(tmp_path / "two", 3))
    assert_same_weights(weights(checkpoint_path(tmp_path / "one", 3)), final, exact=False)

    shutil.rmtree(checkpoint_path(tmp_path / "two", 3))
    resumed = torchrun(two_config, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert_same_weights(final, weights(checkpoint_path(tmp_path / "two", 3)))


def test_a_t5_student_trains(records_path, tmp_path):
    out = tmp_path / "t5"
    tree = settings(records_path, out, max_steps=2, save_every=1, keep_last=0)
    tree["model"] = {"config": {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 2,
                                "num_heads": 4}, "tokenizer_vocab_size": 300}
    train(load_config(config_of(tree, tmp_path)))
    logged = metrics(out)
    assert all(torch.isfinite(torch.tensor(m["loss"])) and m["ce"] > 0 and m["kl"] > 0 for m in logged)
    first, second = weights(checkpoint_path(out, 1)), weights(checkpoint_path(out, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)
    model, _ = load_for_eval(checkpoint_path(out, 2))
    assert model.config.is_encoder_decoder


def test_lora_checkpoints_hold_adapters_and_resume_exactly(records_path, tmp_path):
    tree = settings(
        records_path, tmp_path / "whole", max_steps=4, save_every=2, keep_last=0, min_lr_ratio=0.5
    )
    tree["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    config_path = config_of(tree, tmp_path)
    whole = train(load_config(config_path))["checkpoint"]
    files = {p.name for p in whole.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", BASE_SUBFOLDER} <= files
    assert "model.safetensors" not in files
    adapters = weights(whole, "adapter_model.safetensors")
    assert adapters and all("lora_" in key for key in adapters)

    # a run stopped after its step-2 checkpoint (dropout draws included) continues exactly
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    shutil.rmtree(checkpoint_path(tmp_path / "cut", 4))
    with pytest.raises(InputError, match="already holds checkpoints: pass --resume"):
        train(load_config(config_path, [f"train.out_dir={tmp_path / 'cut'}"]))
    resumed = train(load_config(config_path, [f"train.out_dir={tmp_path / 'cut'}"]), resume=True)
    assert_same_weights(adapters, weights(resumed["checkpoint"], "adapter_model.safetensors"))
    assert [(m["step"], m["loss"]) for m in metrics(tmp_path / "cut")] == [
        (m["step"], m["loss"]) for m in metrics(tmp_path / "whole")]

    model, _ = load_for_eval(whole)  # the base from mcckd_base/, the adapters merged
    assert not any("lora_" in name for name, _ in model.named_parameters())
    with pytest.raises(InputError, match="--resume: no checkpoint"):
        train(load_config(config_path, [f"train.out_dir={tmp_path / 'empty'}"]), resume=True)


def test_checkpointing_and_bf16_options(records_path, tmp_path):
    """Gradient checkpointing recomputes the same step; bf16 autocast trains near fp32."""
    def run(name, **train_options):
        tree = settings(records_path, tmp_path / name, max_steps=3, **train_options)
        tree["model"]["gradient_checkpointing"] = name == "checkpointed"
        train(load_config(config_of(tree, tmp_path, f"{name}.yaml")))
        return weights(checkpoint_path(tmp_path / name, 3)), metrics(tmp_path / name)

    plain, plain_log = run("plain")
    checkpointed, checkpointed_log = run("checkpointed")
    assert_same_weights(plain, checkpointed, exact=False)
    assert [m["loss"] for m in checkpointed_log] == pytest.approx([m["loss"] for m in plain_log], rel=1e-6)
    _, bf16_log = run("bf16", precision="bf16")
    assert [m["loss"] for m in bf16_log] == pytest.approx([m["loss"] for m in plain_log], rel=2e-2)
    assert bf16_log[0]["loss"] != plain_log[0]["loss"]  # it did run in bf16


def test_a_student_that_cannot_load_is_a_config_error(records_path, tmp_path):
    tree = settings(records_path, tmp_path / "run")
    tree["model"] = {"name_or_path": str(tmp_path)}  # a folder without a model
    with pytest.raises(InputError, match="config key 'model.name_or_path': cannot load"):
        train(load_config(config_of(tree, tmp_path)))
