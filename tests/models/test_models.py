"""Students, packed attention (each sequence attends only to itself), encoder-decoder batches."""
import sys
import types

import pytest
import torch
import torch.nn.attention.varlen
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, T5Config

from mcckd.data import IGNORE_INDEX, TokenizedQuestion, TokenizedRationale
from mcckd.data.seq2seq import pad_seq2seq
from mcckd.models.attention import (
    attention_backend,
    resolve_attention_backend,
    sdpa_packed_attention,
    set_attention_backend,
    transformers_attention,
)
from mcckd.models.packed import PackedSequences, forward_packed, positions_from_cu_seqlens
from mcckd.models.seq2seq import forward_seq2seq
from mcckd.models.student import load_student
from mcckd.models.word_tokenizer import train_word_tokenizer
from mcckd.models.wrappers import output_layer

VOCAB = 97
LENGTHS = [5, 9, 1, 7]  # a one-token sequence too


def tiny_config(family):
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[family](**fields)


def packed_stream(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (sum(lengths),), generator=generator)
    cu_seqlens = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    return input_ids, cu_seqlens


def separate_hidden(model, input_ids, cu_seqlens):
    """Each sequence through transformers' own attention, one at a time."""
    with transformers_attention(model):
        return torch.cat([model.model(input_ids=input_ids[start:end][None]).last_hidden_state[0]
                          for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_equals_separate(family, backend):
    torch.manual_seed(0)
    model = load_student(tiny_config(family), attn_backend=backend, device="cpu").model.eval()
    input_ids, cu_seqlens = packed_stream(LENGTHS)
    with torch.no_grad():
        packed = forward_packed(model, input_ids, cu_seqlens)
        separate = separate_hidden(model, input_ids, cu_seqlens)
    assert packed.shape == (sum(LENGTHS), 32)
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=0)
    assert attention_backend(model) == backend  # restored after the separate pass


def test_position_ids_alone_leak_across_sequences():
    """Why the backends exist: with transformers' own sdpa and restarting position ids, a packed
    sequence sees the one before it (transformers 5.24; drop this test when that is fixed)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa").eval()
    input_ids, cu_seqlens = packed_stream([6, 6])
    with torch.no_grad():
        packed = model.model(input_ids=input_ids[None],
                             position_ids=positions_from_cu_seqlens(cu_seqlens)[None]).last_hidden_state[0]
        alone = model.model(input_ids=input_ids[6:][None]).last_hidden_state[0]
    assert (packed[6:] - alone).abs().max() > 1e-2


def test_a_sequence_ignores_its_neighbours():
    torch.manual_seed(0)
    model = load_student(tiny_config("llama"), attn_backend="sdpa", device="cpu").model.eval()
    input_ids, cu_seqlens = packed_stream(LENGTHS)
    changed = input_ids.clone()
    changed[:5] = (changed[:5] + 1) % VOCAB  # the first sequence only
    with torch.no_grad():
        before, after = (
            forward_packed(model, input_ids, cu_seqlens),
            forward_packed(model, changed, cu_seqlens),
        )
    assert not torch.allclose(before[:5], after[:5])
    torch.testing.assert_close(before[5:], after[5:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_cpu_sdpa_sequence_by_sequence_equals_the_dense_mask(heads, kv_heads):
    """On a CPU the sdpa backend attends sequence by sequence; it must give what one call under
    the block-diagonal mask gives, forward and backward (an empty sequence included)."""
    generator = torch.Generator().manual_seed(3)
    cu_seqlens = torch.tensor([0, 5, 5, 14, 22], dtype=torch.int32)
    N, D = 22, 8
    q, k, v = (torch.randn(1, h, N, D, generator=generator, dtype=torch.float64, requires_grad=True)
               for h in (heads, kv_heads, kv_heads))
    packed = PackedSequences.from_cu_seqlens(cu_seqlens)
    out, _ = sdpa_packed_attention(None, q, k, v, None, scaling=0.3, packed_sequences=packed)
    keys, values = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    want = F.scaled_dot_product_attention(q, keys, values, attn_mask=packed.dense_mask(None), scale=0.3)
    want = want.transpose(1, 2)
    assert out.shape == (1, N, heads, D)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    want_grads = torch.autograd.grad((want * weights).sum(), (q, k, v))
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_sliding_window_layers_mask_distant_keys():
    mask = PackedSequences.from_cu_seqlens(torch.tensor([0, 4, 6], dtype=torch.int32)).dense_mask(window=2)
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_gradients_flow_through_the_packed_stream():
    torch.manual_seed(0)
    model = load_student(tiny_config("qwen2"), attn_backend="sdpa", device="cpu").model
    input_ids, cu_seqlens = packed_stream(LENGTHS)
    forward_packed(model, input_ids, cu_seqlens)[5:14].sum().backward()  # the second sequence
    # the embeddings of tokens of other sequences get no gradient through attention
    grad = model.model.embed_tokens.weight.grad
    only_elsewhere = set(input_ids[:5].tolist() + input_ids[14:].tolist()) - set(input_ids[5:14].tolist())
    assert grad[list(only_elsewhere)].abs().max() == 0
    assert grad[input_ids[5:14]].abs().max() > 0


def reference_varlen(q, k, v, cu_q, max_q, scale, left_window):
    """What the varlen kernels compute, sequence by sequence: q [N, H, D], k/v [N, Hkv, D]."""
    out = torch.empty_like(q)
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        ks, vs = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=0) for t in (ks, vs))
        n = end - start
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        if left_window >= 0:
            mask &= torch.ones(n, n, dtype=torch.bool).triu(-left_window)
        out[start:end] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale).transpose(
            0, 1
        )
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and cu_q.dtype == torch.int32
    return out


def fake_flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None,
                                causal=False, window_size=(-1, -1)):
    assert causal and torch.equal(cu_q, cu_k) and dropout_p == 0.0 and window_size[1] in (-1, 0)
    return reference_varlen(q, k, v, cu_q, max_q, softmax_scale, window_size[0])


def fake_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                     enable_gqa=False):
    """torch >= 2.11's signature."""
    assert window_size[1] == 0 and (enable_gqa or query.shape[1] == key.shape[1])
    return reference_varlen(query, key, value, cu_seq_q, max_q, scale, window_size[0])


def fake_varlen_attn_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, scale=None):
    """torch 2.10's signature: no window, no GQA."""
    assert is_causal and query.shape[1] == key.shape[1]
    return reference_varlen(query, key, value, cu_seq_q, max_q, scale, -1)


@pytest.mark.parametrize("backend, kernel", [
    ("flash_attn", fake_flash_attn_varlen_func),
    ("varlen", fake_varlen_attn),
    ("varlen", fake_varlen_attn_2_10),
])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_varlen_backends_pass_the_kernels_what_they_expect(family, backend, kernel, monkeypatch):
    """The CUDA kernels replaced by a per-sequence reference: layouts, GQA, scale and causality
    as the flash-attn and torch varlen interfaces define them (the kernels run on GPUs only)."""
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=kernel))
    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", kernel)
    torch.manual_seed(0)
    model = load_student(
        tiny_config(family), dtype="bfloat16", attn_backend="sdpa", device="cpu"
    ).model.eval()
    set_attention_backend(model, backend)  # resolve_backend would refuse a CPU
    input_ids, cu_seqlens = packed_stream(LENGTHS)
    with torch.no_grad():
        packed = forward_packed(model, input_ids, cu_seqlens)
        separate = separate_hidden(model, input_ids, cu_seqlens)
    assert packed.dtype == torch.bfloat16
    torch.testing.assert_close(packed, separate, atol=2e-2, rtol=2e-2)
    model.float()
    with pytest.raises(ValueError, match="needs fp16 or bf16 activations"):
        forward_packed(model, input_ids, cu_seqlens)


def test_backend_choice():
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    assert resolve_attention_backend("flex", "cpu") == "flex"
    with pytest.raises(ValueError, match="'varlen' is not available on cpu"):
        resolve_attention_backend("varlen", "cpu")
    with pytest.raises(ValueError, match="attn_backend must be 'auto' or one of"):
        resolve_attention_backend("eager", "cpu")


def test_forward_packed_refuses_transformers_attention():
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa")
    input_ids, cu_seqlens = packed_stream(LENGTHS)
    with pytest.raises(ValueError, match="needs one of the packed attention backends"):
        forward_packed(model, input_ids, cu_seqlens)


def test_generation_runs_with_transformers_attention():
    torch.manual_seed(0)
    model = load_student(tiny_config("llama"), device="cpu").model.eval()
    prompt = torch.tensor([[1, 5, 7]])
    with pytest.raises(ValueError, match="run packed training batches only"):
        model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with transformers_attention(model):
        generated = model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 6) and attention_backend(model) == "sdpa"


def test_lora_trains_adapters_only_and_packs():
    torch.manual_seed(0)
    student = load_student(tiny_config("llama"), device="cpu",
                           lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    trainable = [name for name, p in student.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert len(trainable) == 2 * 2 * 2  # A and B, q and v, 2 layers
    input_ids, cu_seqlens = packed_stream(LENGTHS)
    with torch.no_grad():
        packed = forward_packed(student.model, input_ids, cu_seqlens)
        separate = separate_hidden(student.model.get_base_model(), input_ids, cu_seqlens)
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=0)


def test_load_student_from_a_folder(tmp_path):
    tokenizer = train_word_tokenizer(["one two three four five"] * 4, vocab_size=300)
    config = tiny_config("qwen2")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    student = load_student(str(tmp_path), dtype="bfloat16", device="cpu")
    assert student.tokenizer("one two")["input_ids"] == tokenizer("one two")["input_ids"]
    assert student.model.dtype == torch.bfloat16 and attention_backend(student.model) == "sdpa"


def seq2seq_question(question_id, rationales, answer_ids, prompt_length):
    """A TokenizedQuestion whose target of rationale i is rationale tokens + answer + EOS (2)."""
    sequences = []
    for tokens in rationales:
        ids = [7] * prompt_length + tokens + answer_ids + [2]
        sequences.append(TokenizedRationale(ids, prompt_length, prompt_length + len(tokens)))
    return TokenizedQuestion(question_id, answer_ids, sequences)


def test_t5_padded_batch_matches_the_model_logits():
    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=2)
    model = load_student(config, device="cpu").model.eval()
    questions = [seq2seq_question("a", [[10, 11, 12], [13]], [40, 41], 3),
                 seq2seq_question("b", [[20, 21]], [50], 2)]
    prompts = [[5, 6, 7, 2], [8, 2]]
    batch = pad_seq2seq(questions, prompts, k=3, pad_id=0, decoder_start_id=0)
    # rows: a/0 target 3+2+1 = 6 tokens, a/1 4, b/0 4: Ld = 6
    assert batch.decoder_input_ids.shape == (3, 6)
    assert batch.decoder_input_ids[1].tolist() == [0, 13, 40, 41, 0, 0]
    assert batch.labels.view(3, 6)[1].tolist() == [13, 40, 41, 2, IGNORE_INDEX, IGNORE_INDEX]
    assert batch.answer_index.tolist() == [[3, 7, -1], [4, 8, -1], [14, -1, -1]]
    assert batch.labels[batch.answer_index[:2, :2]].tolist() == [[40, 40], [41, 41]]
    with torch.no_grad():
        hidden = forward_seq2seq(model, batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       decoder_input_ids=batch.decoder_input_ids,
                       decoder_attention_mask=batch.decoder_attention_mask).logits
    torch.testing.assert_close(output_layer(model)(hidden), logits.flatten(0, 1), atol=1e-5, rtol=1e-5)
