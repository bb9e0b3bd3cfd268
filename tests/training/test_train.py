"""The training loop: the loss falls, alpha = 0 is plain CE under either normalisation, T5 and
LoRA students, what a run writes. Resuming: test_resume.py."""
import shutil

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_weights, config_of, metrics, settings, synthetic_records, weights
from transformers import AutoConfig, AutoModelForCausalLM

from mcckd.data.stream import MicroBatches
from mcckd.errors import InputError
from mcckd.models.loading import BASE_SUBFOLDER
from mcckd.models.loading import load_checkpoint as load_for_eval
from mcckd.models.student import load_student
from mcckd.training.checkpoint import checkpoint_path, latest_checkpoint
from mcckd.training.config import load_config
from mcckd.training.loop import train


def test_the_loss_falls_and_the_run_writes_its_files(records_path, tmp_path):
    out = tmp_path / "run"
    tree = settings(records_path, out, max_steps=60, warmup_steps=3, save_every=20, keep_last=2, lr=1e-2,
                    report_to=["jsonl", "tensorboard"], alpha=0.5)
    tree["eval"] = {"data": str(records_path), "every": 25, "limit": 4, "max_new_tokens": 8}
    result = train(load_config(config_of(tree, tmp_path)))
    logged = metrics(out)
    steps = [m for m in logged if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 61))
    assert steps[-1]["loss"] < 0.4 * steps[0]["loss"]
    for m in steps:
        assert m["loss"] == pytest.approx(m["ce"] + 0.5 * m["kl"], rel=1e-5)
        assert m["kl"] >= 0 and m["tokens_per_s"] > 0 and m["peak_mem_mb"] > 0 and m["grad_norm"] > 0
    assert steps[0]["lr"] == pytest.approx(1e-2 / 3) and steps[2]["lr"] == pytest.approx(1e-2)
    evaluations = [m for m in logged if "eval_accuracy" in m]
    assert [m["step"] for m in evaluations] == [25, 50, 60]  # every 25 steps, and after the last
    assert all(m["eval_n"] == 4 and 0 <= m["eval_accuracy"] <= 1 for m in evaluations)
    assert result["checkpoint"] == checkpoint_path(out, 60) == latest_checkpoint(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000040", "step-000060"]
    files = {p.name for p in result["checkpoint"].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_state.pt", "optimizer.pt",
            "process_state_0.pt", "manifest.json"} <= files
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(out / "config.yaml").train.alpha == 0.5
    model, tokenizer = load_for_eval(result["checkpoint"])
    assert tokenizer("Tom has 2 pens")["input_ids"] and model.config.model_type == "llama"


@pytest.mark.parametrize("normalization", ["step", "micro_batch"])
def test_alpha_zero_is_plain_cross_entropy(records_path, tmp_path, normalization):
    """alpha = 0 trains exactly as CE over each sequence run on its own: the mean over the step's
    target tokens ("step"), or the mean of each micro-batch's token means ("micro_batch")."""
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
                loss_normalization=normalization,
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
        batches = micro_batches.for_step(step)
        targets = [int((batch.labels != -100).sum()) for batch in batches]
        assert targets[0] != targets[1]  # the two normalisations differ on this step
        for batch, n in zip(batches, targets):
            logits = torch.cat(
                [
                    model(input_ids=batch.input_ids[start:end][None]).logits[0]
                    for start, end in zip(batch.cu_seqlens[:-1].tolist(), batch.cu_seqlens[1:].tolist())
                ]
            )
            token_sum = F.cross_entropy(logits, batch.labels, ignore_index=-100, reduction="sum")
            (token_sum / (sum(targets) if normalization == "step" else 2 * n)).backward()
        optimizer.step()
        optimizer.zero_grad()
    plain = {k: v for k, v in model.state_dict().items() if k in trained}
    assert_same_weights(trained, plain, exact=False)


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
