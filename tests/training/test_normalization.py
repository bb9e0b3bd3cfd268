"""Step-global normalisation: a step's loss and gradients do not depend on how its questions are
split into micro-batches."""
import contextlib

import pytest
import torch
from helpers import synthetic_records

from mcckd.data import pack_questions, tokenize_records
from mcckd.data.records import record_texts
from mcckd.models.build import random_config
from mcckd.models.student import load_student
from mcckd.models.word_tokenizer import train_word_tokenizer
from mcckd.training.distributed import Runtime
from mcckd.training.loop import train_step
from mcckd.training.normalization import loss_shares, micro_batch_counts
from mcckd.training.objective import MCCKDObjective

CPU = Runtime(0, 1, torch.device("cpu"))
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def questions_and_tokenizer():
    records = synthetic_records()
    tokenizer = train_word_tokenizer(record_texts(records), 300)
    questions, _ = tokenize_records(records, tokenizer, max_length=128)
    return questions, tokenizer


def one_step(tokenizer, batches, shares):
    """(weight change = -gradient under SGD with lr 1, [loss, ce, kl]) of one train_step."""
    torch.manual_seed(0)
    model = load_student(random_config(LLAMA, tokenizer), tokenizer=tokenizer, attn_backend="sdpa",
                         device="cpu").model
    objective = MCCKDObjective(model, alpha=0.5, temperature=1.0, chunk_size=None, dtype=torch.float32)
    before = {name: p.detach().clone() for name, p in objective.named_parameters()}
    optimizer = torch.optim.SGD(objective.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    sums, _ = train_step(objective, optimizer, scheduler, batches, shares, max_grad_norm=None,
                         autocast=contextlib.nullcontext, sync=lambda last: contextlib.nullcontext())
    change = {name: before[name] - p.detach() for name, p in objective.named_parameters()}
    return change, sums


def assert_same_gradients(a, b):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7, msg=name)


def test_two_uneven_micro_batches_give_the_gradient_of_one_that_holds_both(questions_and_tokenizer):
    questions, tokenizer = questions_and_tokenizer
    small = [questions[-1]]  # one question with 2 rationales: few targets, few groups with pairs
    large = questions[:4]  # four questions with 3 rationales each
    batches = [pack_questions(small, 3), pack_questions(large, 3)]
    counts = [micro_batch_counts(batch).tolist() for batch in batches]
    assert counts[1][0] > 4 * counts[0][0] and counts[1][1] > 2 * counts[0][1]
    whole = [pack_questions(small + large, 3)]

    split_change, split_sums = one_step(tokenizer, batches, loss_shares(batches, "step", CPU))
    whole_change, whole_sums = one_step(tokenizer, whole, loss_shares(whole, "step", CPU))
    assert_same_gradients(split_change, whole_change)
    torch.testing.assert_close(split_sums, whole_sums, rtol=1e-5, atol=1e-7)  # the step's true means
    assert whole_sums[0] == pytest.approx(float(whole_sums[1] + 0.5 * whole_sums[2]), rel=1e-6)

    # each micro-batch's own means, averaged, weigh the small one's tokens more: another gradient
    mean_change, mean_sums = one_step(tokenizer, batches, loss_shares(batches, "micro_batch", CPU))
    assert not torch.allclose(mean_sums, whole_sums, rtol=1e-3)
    assert any(not torch.allclose(mean_change[name], whole_change[name], rtol=1e-2, atol=1e-6)
               for name in whole_change)


def test_shares_count_targets_and_groups_with_pairs(questions_and_tokenizer):
    questions, _ = questions_and_tokenizer
    batches = [pack_questions([questions[-1]], 3), pack_questions(questions[:2], 3)]
    answer_lengths = [len(questions[-1].answer_ids), sum(len(q.answer_ids) for q in questions[:2])]
    targets = [sum(len(r.input_ids) - r.target_start for q in group for r in q.rationales)
               for group in ([questions[-1]], questions[:2])]
    shares = loss_shares(batches, "step", CPU)
    expected = torch.tensor([[t / sum(targets), g / sum(answer_lengths)]
                             for t, g in zip(targets, answer_lengths)])
    torch.testing.assert_close(shares, expected)
    # a question with a single rationale has no pairs: its groups are not counted
    lone = pack_questions([questions[0]], 3)
    lone.answer_index[:, 1:] = -1
    assert micro_batch_counts(lone)[1] == 0
    assert loss_shares([lone], "step", CPU)[0, 1] == 0
    assert loss_shares(batches, "micro_batch", Runtime(0, 2, torch.device("cpu"))).unique().tolist() == [0.25]
