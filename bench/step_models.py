"""The students of bench/train_step.py and the model FLOPs of a training step.

Shapes: Qwen2.5-0.5B and Qwen2.5-1.5B as published in their config.json (random weights here),
and a tiny Qwen2 for CPU runs. MFU convention (the one of PaLM and Megatron-LM, as llm-foundry
reports it): per real token 6 P FLOPs, P the weights of every matrix product (the attention
and MLP projections of each layer and the lm_head, counted even when tied to the embedding;
no embedding lookup, norms or biases), plus causal attention, 6 n_layers H d_head l (l + 1)
for a sequence of l tokens (QK^T and AV forward, 4 H d_head FLOPs per attended pair, times 3
for the backward); padding counts for nothing. Divided by 989 TFLOP/s, the dense bf16 peak of
an H100 or H200 SXM.
"""
from transformers import Qwen2Config

PEAK_FLOPS = 989e12

# Fields of Qwen2.5-0.5B's and Qwen2.5-1.5B's config.json that fix the cost of a step.
QWEN2_5 = {
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2},
}
QWEN2_5_COMMON = {"vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                  "rope_theta": 1000000.0, "tie_word_embeddings": True, "use_sliding_window": False,
                  "hidden_act": "silu", "attention_dropout": 0.0}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "attention_dropout": 0.0}
SHAPES = (*QWEN2_5, "tiny")


def student_config(shape):
    """The Qwen2Config of a shape name in SHAPES."""
    if shape == "tiny":
        return Qwen2Config(**TINY)
    return Qwen2Config(**QWEN2_5_COMMON, **QWEN2_5[shape])


def matmul_weights(config):
    """P: the weights of every matrix product of a token's forward (layers and lm_head)."""
    d, inner = config.hidden_size, config.intermediate_size
    head_dim = d // config.num_attention_heads
    q = d * config.num_attention_heads * head_dim
    kv = 2 * d * config.num_key_value_heads * head_dim
    per_layer = 2 * q + kv + 3 * d * inner  # q and o, k and v, gate, up and down
    return config.num_hidden_layers * per_layer + config.vocab_size * d


def step_flops(config, sequence_lengths):
    """Model FLOPs of one forward+backward over sequences of these real lengths."""
    attention_width = config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    pairs = sum(length * (length + 1) for length in sequence_lengths)
    attention = 6 * config.num_hidden_layers * attention_width * pairs
    return 6 * matmul_weights(config) * sum(sequence_lengths) + attention
