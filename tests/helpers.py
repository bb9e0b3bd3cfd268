"""Helpers shared by the tests: float64 oracles written from the definitions, error measures,
random inputs. Imported as `helpers` (tests/conftest.py puts this folder on the path)."""
import itertools
import json
import math
import os
import subprocess
import sys

import torch
import yaml
from safetensors.torch import load_file

from mcckd.data import Record

# d(objective) = 1.5 dloss + 0.25 dce + 0.75 dkl: gradient outputs that are not 1, on every
# output of fused_linear_mcc_loss.
FUSED_COEFS = (1.5, 0.25, 0.75)


def pairwise_definition(logits, valid, temperature, reduction):
    """The loss literally: mean over valid pairs of (KL(p_i||p_j) + KL(p_j||p_i)) / 2, float64."""
    y = logits.double() / temperature
    G, K, _ = y.shape
    group_losses, has_pairs = [], []
    for g in range(G):
        rows = [k for k in range(K) if valid is None or bool(valid[g, k])]
        logp = torch.log_softmax(y[g], dim=-1)
        terms = []
        for i, j in itertools.combinations(rows, 2):
            kl_ij = torch.where(logp[i] > -math.inf, logp[i].exp() * (logp[i] - logp[j]), 0).sum()
            kl_ji = torch.where(logp[j] > -math.inf, logp[j].exp() * (logp[j] - logp[i]), 0).sum()
            terms.append((kl_ij + kl_ji) / 2)
        group_losses.append(torch.stack(terms).mean() if terms else y.new_zeros(()))
        has_pairs.append(bool(terms))
    group_losses = torch.stack(group_losses)
    if reduction == "none":
        return group_losses
    if reduction == "sum":
        return group_losses.sum()
    return group_losses.sum() / max(sum(has_pairs), 1)


def loss_and_grad(fn, x, grad_output):
    """fn(x) and d(sum(fn * grad_output))/dx, on a fresh leaf."""
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf)
    (grad,) = torch.autograd.grad(loss, leaf, grad_output)
    return loss.detach(), grad


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (absolute when expected is all zero)."""
    scale = expected.abs().max().item()
    return (actual.double() - expected.double()).abs().max().item() / (scale if scale > 0 else 1.0)


def random_logits(G, K, V, seed, *, masked=True, dtype=torch.float32, scale=3.0, device="cpu"):
    """(logits [G, K, V] of std `scale`, valid [G, K] with ~30% of rows masked, group 0 full)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    logits = (scale * torch.randn(G, K, V, generator=generator, device=device)).to(dtype)
    valid = None
    if masked:
        valid = torch.rand(G, K, generator=generator, device=device) > 0.3
        valid[0] = True  # at least one full group
    return logits, valid


def run_fused(fn, inputs, dtype, **kwargs):
    """(loss, ce, kl, grads of FUSED_COEFS . (loss, ce, kl) to hidden, weight, bias), float64,
    of fn = fused_linear_mcc_loss or its reference on `inputs` (a dict) cast to dtype."""
    params = {
        k: inputs[k].to(dtype).requires_grad_() for k in ("hidden", "weight", "bias") if inputs[k] is not None
    }
    out = fn(params["hidden"], params["weight"], inputs["labels"], inputs["answer_index"],
             answer_valid=inputs["answer_valid"], bias=params.get("bias"), **kwargs)
    objective = sum(c * o for c, o in zip(FUSED_COEFS, out))
    grads = torch.autograd.grad(objective, list(params.values()))
    return [o.detach().double() for o in out] + [g.double() for g in grads]


def rounded_to(inputs, dtype):
    """The float tensors of `inputs` rounded to dtype and back to float64 (the same rounded
    inputs for a float64 ground truth)."""
    return {key: value.to(dtype).double() if value is not None and value.is_floating_point() else value
            for key, value in inputs.items()}


# Chat templates in three public styles, written for the tests (nothing can be downloaded):
# ChatML (Qwen), Llama-3 headers and Mistral's [INST], plus a ChatML variant whose assistant turn
# opens with an empty think block the generation prompt does not write (as reasoning models'
# templates do). name -> (template, its special tokens, the end of turn after a reply).
CHAT_TEMPLATES = {
    "chatml": (
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
        "{%- for message in messages if message['role'] != 'system' %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
        ["<|im_start|>", "<|im_end|>"],
        "<|im_end|>\n",
    ),
    "llama3": (
        "{{- bos_token }}"
        "{%- for message in messages %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
        " + '<|eot_id|>' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}"
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
    ),
    "mistral": (
        "{{- bos_token }}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + ' [/INST]' }}"
        "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
        "{%- else %}{{- raise_exception('Only user and assistant roles are supported!') }}{%- endif %}"
        "{%- endfor %}",
        ["[INST]", "[/INST]"],
        "</s>",
    ),
    "chatml-think": (
        "{%- for message in messages %}"
        "{%- if message['role'] == 'assistant' %}"
        "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
        ["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        "<|im_end|>\n",
    ),
}


def chat_tokenizer(style, texts, vocab_size=400):
    """A BPE tokenizer trained on `texts` with the special tokens and chat template of `style`."""
    from tokenizers import AddedToken

    from mcckd.models.word_tokenizer import train_word_tokenizer

    template, special_tokens, _ = CHAT_TEMPLATES[style]
    tokenizer = train_word_tokenizer([*texts, "system user assistant helpful"], vocab_size=vocab_size)
    if style == "llama3":  # as Llama 3's tokenizer has them: added tokens marked special, not named
        tokenizer.add_tokens([AddedToken(token, special=True) for token in special_tokens])
    else:
        tokenizer.add_special_tokens({"additional_special_tokens": special_tokens})
    tokenizer.chat_template = template
    return tokenizer


def tiny_llama(tokenizer, seed=0):
    """A 2-layer, 64-wide Llama over the tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def memorise(model, sequences, pad_id, steps=200):
    """Train `model` on the targets of (ids, target start) sequences, full-batch AdamW; the
    final loss."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_id)
    labels = torch.full((len(sequences), width), -100)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, target_start) in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, target_start:len(ids)] = torch.tensor(ids[target_start:])
        attention_mask[row, :len(ids)] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


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


# Training runs: a tiny random Llama student on the CPU, its config as nested dicts.
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
                  "report_to": ["jsonl"], "progress_bar": False, **train},
    }


def config_of(tree, tmp_path, name="run.yaml"):
    """The config tree written as tmp_path/name (YAML)."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def metrics(out_dir):
    """The lines of a run's metrics.jsonl."""
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def weights(folder, name="model.safetensors"):
    """{name: tensor} of a checkpoint's safetensors file."""
    return load_file(folder / name)


def assert_same_weights(a, b, exact=True):
    """Two state dicts hold the same tensors: bit for bit, or to float32 tolerance."""
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


def run_command(args, **kwargs):
    """`python ARGS` started in the background, one thread, stderr piped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def torchrun(config_path, *args):
    """`mcckd train` under torchrun, two processes (gloo on the CPU), in the background."""
    return run_command(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "mcckd", "train", "--config", str(config_path), *args])


# Kernel tests: near-identical rows, errors per group, the plain low-precision computation, and
# the cross-entropy rows from their definition.
def near_identical_rows(G, K, V, eps, scale, seed):
    """logits [G, K, V] float32: a shared row of std `scale` per group plus noise of std eps."""
    generator = torch.Generator().manual_seed(seed)
    shared = scale * torch.randn(G, 1, V, generator=generator, dtype=torch.float64)
    return (shared + eps * torch.randn(G, K, V, generator=generator, dtype=torch.float64)).float()


def groupwise_relative_error(actual, expected):
    """The largest over groups (dim 0) of relative_error: a small group's error counts as much
    as a large group's."""
    return max(relative_error(a, e) for a, e in zip(actual, expected))


def pairwise_plain(logits, valid, temperature, reduction):
    """The loss by the direct formulas, S = k sum_i <p_i, l_i - lbar>, in logits' own dtype."""
    G, K, _ = logits.shape
    if valid is None:
        valid = torch.ones(G, K, dtype=torch.bool)
    rows = valid.unsqueeze(-1)
    k = valid.sum(dim=1).to(logits.dtype)
    logp = torch.log_softmax(torch.where(rows, logits / temperature, 0.0), dim=-1)
    lbar = torch.where(rows, logp, 0.0).sum(dim=1, keepdim=True) / k.clamp(min=1)[:, None, None]
    inner = torch.where(rows, logp.exp() * (logp - lbar), 0.0).sum(dim=(1, 2))
    pairs = k * (k - 1)
    group_loss = torch.where(pairs > 0, k * inner / pairs.clamp(min=1), 0.0)
    if reduction == "none":
        return group_loss.float()
    if reduction == "sum":
        return group_loss.sum().float()
    return (group_loss.sum() / (pairs > 0).sum().clamp(min=1)).float()


def cross_entropy_definition(logits, bias, labels, ignore_index):
    """(loss [C], grad [C, V]) float64: lse(z) - z[y] and softmax(z) - onehot(y), 0 on rows
    whose label is ignore_index (their logits are not looked at)."""
    z = logits.double() + (bias.double() if bias is not None else 0.0)
    ignored = labels == ignore_index
    z = torch.where(ignored[:, None], 0.0, z)
    targets = torch.where(ignored, 0, labels).long()
    lse = torch.logsumexp(z, dim=1)
    loss = torch.where(ignored, 0.0, lse - z.gather(1, targets[:, None]).squeeze(1))
    grad = torch.softmax(z, dim=1) - torch.nn.functional.one_hot(targets, z.shape[1]).double()
    return loss, torch.where(ignored[:, None], 0.0, grad)
