"""One full MCC-KD training step on a CUDA GPU: mcckd's against a naive one.

`python bench/train_step.py [OUT.json]`. A Qwen2-0.5B-shaped student with random weights
(fp32 master weights, bf16 autocast, fused AdamW), 8 questions x K=4 rationales x 512 tokens.

- mcckd: the packed stream through `forward_packed` (varlen attention), the fused lm_head +
  CE + consistency loss on the hidden states (`MCCKDObjective`), `train_step`.
- naive: the Hugging Face forward on the [32, 512] batch (SDPA attention) with full logits,
  `F.cross_entropy` in float32 and the reference pairwise KL on the answer rows.

Reports step time, tokens/s and peak memory (weights and optimizer state included).
"""
import contextlib
import json
import sys

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Qwen2Config

from mcckd.data import TokenizedQuestion, TokenizedRationale, pack_questions
from mcckd.models.student import load_student
from mcckd.ops.reference import pairwise_sym_kl_reference
from mcckd.training.loop import train_step
from mcckd.training.objective import MCCKDObjective

QUESTIONS, K, SEQ_LEN, PROMPT_LEN, ANSWER_LEN = 8, 4, 512, 64, 3
WARMUP_STEPS, TIMED_STEPS = 2, 5


def student_config():
    """Qwen2-0.5B's shape (494M parameters)."""
    return Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                       tie_word_embeddings=True)


def synthetic_batch(vocab_size, generator):
    """A PackedBatch of QUESTIONS x K sequences of SEQ_LEN random tokens sharing each answer."""
    questions = []
    for q in range(QUESTIONS):
        answer = torch.randint(vocab_size, (ANSWER_LEN,), generator=generator).tolist()
        answer_start = SEQ_LEN - ANSWER_LEN - 2
        rationales = []
        for _ in range(K):
            ids = torch.randint(vocab_size, (SEQ_LEN,), generator=generator).tolist()
            ids[answer_start:answer_start + ANSWER_LEN] = answer
            rationales.append(TokenizedRationale(ids, PROMPT_LEN, answer_start))
        questions.append(TokenizedQuestion(f"q{q}", answer, rationales))
    return pack_questions(questions, K)


def timed(step, steps):
    """(median ms of `steps` calls of step(), peak GiB allocated) after WARMUP_STEPS warm-ups."""
    for _ in range(WARMUP_STEPS):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def mcckd_step(config, batch, device="cuda"):
    model = load_student(config, attn_backend="auto", device=device).model
    objective = MCCKDObjective(model, alpha=0.1, temperature=1.0, chunk_size=None, dtype=torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    backend = model.config._attn_implementation

    def step():
        train_step(objective, optimizer, scheduler, [batch], max_grad_norm=1.0,
                   autocast=lambda: torch.autocast(device, dtype=torch.bfloat16),
                   sync=lambda last: contextlib.nullcontext())

    return step, backend


def naive_step(config, batch, device="cuda"):
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    input_ids = batch.input_ids.view(QUESTIONS * K, SEQ_LEN)
    labels = batch.labels
    answer_index, valid = batch.answer_index, batch.answer_index >= 0

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(input_ids=input_ids).logits.reshape(-1, config.vocab_size)
        ce = F.cross_entropy(logits.float(), labels, ignore_index=-100)
        kl = pairwise_sym_kl_reference(logits[answer_index.clamp(min=0)], valid)
        (ce + 0.1 * kl).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main():
    torch.manual_seed(0)
    config = student_config()
    batch = synthetic_batch(config.vocab_size, torch.Generator().manual_seed(0)).to("cuda")
    tokens = batch.input_ids.numel()
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "student": "qwen2-0.5b shape",
               "questions": QUESTIONS, "K": K, "seq_len": SEQ_LEN, "tokens": tokens, "providers": {}}
    step, backend = mcckd_step(config, batch)
    ms, peak = timed(step, TIMED_STEPS)
    results["providers"]["mcckd"] = {"attention": backend, "ms_step": ms, "tokens_per_s": tokens / ms * 1e3,
                                     "peak_gb": peak}
    del step
    torch.cuda.empty_cache()
    ms, peak = timed(naive_step(config, batch), TIMED_STEPS)
    results["providers"]["naive"] = {"attention": "sdpa", "ms_step": ms, "tokens_per_s": tokens / ms * 1e3,
                                     "peak_gb": peak}
    for name, row in results["providers"].items():
        print(f"train step {name:6s} ({row['attention']}): {row['ms_step']:.1f} ms, "
              f"{row['tokens_per_s']:.0f} tokens/s, peak {row['peak_gb']:.1f} GiB")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
