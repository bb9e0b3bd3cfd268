"""MCCKDObjective: the lm_head weight is cast to the loss dtype once per optimizer step, with
the same gradients as a cast on every micro-batch."""
import pytest
import torch
from transformers import Qwen2Config

from mcckd.data import TokenizedQuestion, TokenizedRationale, pack_questions
from mcckd.models.student import load_student
from mcckd.models.wrappers import output_layer
from mcckd.training.objective import MCCKDObjective

VOCAB = 61


def objective(cache):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = load_student(config, attn_backend="sdpa", device="cpu").model
    # float64: the cast of the float32 weight is exact, so gradients compare exactly
    return MCCKDObjective(model, alpha=0.1, temperature=1.0, chunk_size=None, dtype=torch.float64,
                          cache_head_weight=cache)


def micro_batches(seed=0):
    generator = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(VOCAB, (n,), generator=generator).tolist()

    batches = []
    for b in range(2):
        answer = ids(2)
        rationales = [TokenizedRationale(ids(3) + ids(4 + k) + answer + ids(1), 3, 7 + k) for k in range(2)]
        batches.append(pack_questions([TokenizedQuestion(f"q{b}", answer, rationales)], 2))
    return batches


def gradients_of_a_step(obj):
    for batch in micro_batches():
        (obj(batch).loss / 2).backward()
    return {name: p.grad.clone() for name, p in obj.named_parameters()}


def test_a_cached_cast_gives_the_gradients_of_a_cast_per_micro_batch():
    per_micro_batch, cached = gradients_of_a_step(objective(False)), gradients_of_a_step(objective(True))
    assert per_micro_batch.keys() == cached.keys()
    for name, grad in per_micro_batch.items():
        assert torch.equal(cached[name], grad), name


@pytest.mark.parametrize("options", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_the_cast_is_made_once_until_the_optimizer_writes_the_weight(options):
    obj = objective(True)
    weight = output_layer(obj.model).weight
    first = obj.head_weight(weight)
    assert obj.head_weight(weight) is first
    gradients_of_a_step(obj)
    torch.optim.AdamW(obj.parameters(), lr=0.1, **options).step()
    second = obj.head_weight(weight)
    assert torch.equal(second, weight.detach().double())
    assert not torch.equal(second, first)


def test_a_weight_written_in_place_is_cast_again():
    obj = objective(True)
    weight = output_layer(obj.model).weight
    first = obj.head_weight(weight)
    with torch.no_grad():
        weight.mul_(2)  # as a checkpoint load writes it
    assert torch.equal(obj.head_weight(weight), 2 * first.detach())


def test_a_cast_made_without_gradients_is_not_reused_with_them():
    obj = objective(True)
    weight = output_layer(obj.model).weight
    with torch.no_grad():
        frozen = obj.head_weight(weight)
    assert frozen.grad_fn is None
    assert obj.head_weight(weight).grad_fn is not None


def test_without_the_cache_every_forward_casts_anew():
    obj = objective(False)
    weight = output_layer(obj.model).weight
    assert obj.head_weight(weight) is not obj.head_weight(weight)
