"""bench/train_step.py on the CPU at the tiny shape: every provider takes a step, all compute
the same loss on the same data, the layouts keep every token, and the MFU count is right.
This is what lets the GPU run of the benchmark not fail on a typo."""
import json
import math
import random

import pytest
import step_models
import torch
import train_step
from step_data import LengthDistribution, draw_micro_batches, padded
from step_providers import PROVIDERS, LigerPacked, isolates_packed_rows
from transformers import AutoModelForCausalLM

from mcckd.data import IGNORE_INDEX

CONFIG = step_models.student_config("tiny")


@pytest.fixture(scope="module")
def micro_batches():
    distribution = LengthDistribution.load("svamp")
    return draw_micro_batches(distribution, CONFIG.vocab_size, count=2, micro_batch_tokens=256, K=4, seed=0,
                              scale=0.1)


def weights(provider):
    return torch.cat([p.detach().flatten() for p in provider.model.parameters()])


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_each_provider_takes_a_step_with_a_finite_loss(name, micro_batches):
    provider = PROVIDERS[name](CONFIG, "cpu")
    data = [provider.layout(batch) for batch in micro_batches]
    loss = train_step.first_loss(provider, data[0])
    before = weights(provider)
    provider.step(data)
    assert math.isfinite(loss) and loss > 0
    assert not torch.equal(weights(provider), before)
    assert torch.isfinite(weights(provider)).all()


def test_every_provider_computes_the_same_loss_on_the_same_data(micro_batches):
    losses = {}
    for name, cls in sorted(PROVIDERS.items()):
        provider = cls(CONFIG, "cpu")
        losses[name] = [train_step.first_loss(provider, provider.layout(b)) for b in micro_batches]
    reference = losses["hf_padded"]
    assert reference[0] != reference[1]
    for name, values in losses.items():
        assert values == pytest.approx(reference, rel=1e-5), name


def test_the_packed_peer_gives_one_loss_with_either_mask(micro_batches):
    by_mask = {}
    for mask in ("position_ids", "block_mask"):
        provider = LigerPacked(CONFIG, "cpu", mask=mask)
        by_mask[mask] = train_step.first_loss(provider, micro_batches[0])
    assert by_mask["position_ids"] == pytest.approx(by_mask["block_mask"], rel=1e-5)


class PositionsDropped(torch.nn.Module):
    """A model whose decoder never sees position_ids: packed sequences run together."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def model(self, position_ids=None, **inputs):
        return self.inner.model(**inputs)


def test_the_isolation_check_tells_a_forward_that_separates_packed_sequences_from_one_that_does_not():
    model = AutoModelForCausalLM.from_config(CONFIG, attn_implementation="sdpa")
    assert isolates_packed_rows(model, CONFIG.vocab_size, "cpu")
    assert not isolates_packed_rows(PositionsDropped(model), CONFIG.vocab_size, "cpu")


def test_padded_rows_hold_every_token_label_and_answer_position(micro_batches):
    batch = micro_batches[0]
    rows = padded(batch)
    real = rows.attention_mask.flatten().bool()
    assert rows.input_ids.shape[1] % 8 == 0 and rows.input_ids.shape[1] >= batch.max_seqlen
    assert torch.equal(rows.input_ids.flatten()[real], batch.input_ids)
    assert torch.equal(rows.labels[real], batch.labels)
    assert (rows.labels[~real] == IGNORE_INDEX).all()
    valid = batch.answer_index >= 0
    assert torch.equal(rows.answer_index >= 0, valid)
    answer_tokens = rows.labels[rows.answer_index[valid]]
    assert torch.equal(answer_tokens, batch.labels[batch.answer_index[valid]])


def test_micro_batches_are_whole_questions_within_the_budget(micro_batches):
    for batch in micro_batches:
        assert batch.input_ids.numel() <= 256
        assert (batch.cu_seqlens[1:] > batch.cu_seqlens[:-1]).all()
        # every answer group's rows predict one token under each rationale
        for group in batch.answer_index:
            targets = batch.labels[group[group >= 0]]
            assert (targets == targets[0]).all()


def test_drawn_lengths_follow_the_histogram():
    distribution = LengthDistribution.load("svamp")
    histogram = distribution.target
    width, first, counts = histogram["bin_width"], histogram["first"], histogram["counts"]
    expected = sum((first + i * width + (width - 1) / 2) * c for i, c in enumerate(counts)) / sum(counts)
    rng = random.Random(0)
    draws = [distribution.draw(histogram, rng) for _ in range(20000)]
    assert sum(draws) / len(draws) == pytest.approx(expected, rel=0.02)
    assert min(draws) >= first and max(draws) < first + len(counts) * width


def test_the_flop_count_counts_every_matmul_weight_of_the_model():
    model = AutoModelForCausalLM.from_config(CONFIG)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert step_models.matmul_weights(CONFIG) == linear
    # one sequence of 3 tokens: 6 P per token, and 6 pairs attended (1 + 2 + 3) per layer, each
    # 4 H d_head FLOPs forward, times 3 for the backward
    width = CONFIG.num_attention_heads * (CONFIG.hidden_size // CONFIG.num_attention_heads)
    attention = 3 * 4 * width * 6 * CONFIG.num_hidden_layers
    assert step_models.step_flops(CONFIG, [3]) == 6 * linear * 3 + attention


def test_the_published_shapes_have_their_parameter_counts():
    # Qwen2.5-0.5B has 494M parameters and Qwen2.5-1.5B 1.54B (tied embeddings, biases aside)
    def weights(shape):
        return step_models.matmul_weights(step_models.student_config(shape))

    assert weights("qwen2.5-0.5b") == pytest.approx(494e6, rel=0.01)
    assert weights("qwen2.5-1.5b") == pytest.approx(1.54e9, rel=0.01)


def test_the_command_writes_and_merges_rows(tmp_path):
    out = tmp_path / "train-step.json"
    train_step.main([str(out), "--tiny", "--variants", "mcckd,hf_padded"])
    train_step.main([str(out), "--tiny", "--variants", "mcckd,mcckd+liger"])
    results = json.loads(out.read_text())
    rows = {row["variant"]: row for row in results["rows"]}
    assert sorted(rows) == ["hf_padded", "mcckd", "mcckd+liger"]
    first = {name: row.get("loss_first_micro_batch") for name, row in rows.items()}
    assert first["mcckd"] == pytest.approx(first["hf_padded"], rel=1e-5)
    assert rows["hf_padded"]["padded_tokens_per_step"] > rows["hf_padded"]["real_tokens_per_step"] > 0
    assert rows["mcckd"]["tokens_per_s"] > 0 and 0 < rows["mcckd"]["mfu"] < 1
    assert "CUDA" in rows["mcckd+liger"]["error"]  # recorded, not raised


def test_liger_patches_are_undone_after_a_variant():
    from transformers.models.qwen2 import modeling_qwen2

    original = modeling_qwen2.apply_rotary_pos_emb
    with train_step.patches_undone(modeling_qwen2):
        modeling_qwen2.apply_rotary_pos_emb = None
        modeling_qwen2.added_by_a_patch = True
    assert modeling_qwen2.apply_rotary_pos_emb is original
    assert not hasattr(modeling_qwen2, "added_by_a_patch")
