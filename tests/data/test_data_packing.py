"""Packing: labels, positions and cu_seqlens agree, answer_index finds the answer, batches."""
import pytest
import torch
from torch.utils.data import DataLoader

from mcckd.data import IGNORE_INDEX, TokenBudgetBatchSampler, pack_questions, tokenize_records
from mcckd.data.packing import best_fit_decreasing


@pytest.fixture(scope="module")
def questions(tokenizer, records):
    return tokenize_records(records, tokenizer)[0]


def test_stream_positions_and_labels_agree_with_the_sequences(questions):
    batch = pack_questions(questions, k=3)
    sequences = [rationale for question in questions for rationale in question.rationales]
    lengths = [len(rationale.input_ids) for rationale in sequences]
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.cu_seqlens.tolist() == [sum(lengths[:s]) for s in range(len(lengths) + 1)]
    assert batch.max_seqlen == max(lengths)
    assert batch.input_ids.dtype == batch.position_ids.dtype == batch.labels.dtype == torch.long
    assert batch.input_ids.shape == batch.position_ids.shape == batch.labels.shape == (sum(lengths),)
    for s, rationale in enumerate(sequences):
        start, end = batch.cu_seqlens[s].item(), batch.cu_seqlens[s + 1].item()
        ids = rationale.input_ids
        assert batch.input_ids[start:end].tolist() == ids
        assert batch.position_ids[start:end].tolist() == list(range(len(ids)))
        expected = [ids[t + 1] if rationale.target_start <= t + 1 < len(ids) else IGNORE_INDEX
                    for t in range(len(ids))]
        assert batch.labels[start:end].tolist() == expected
        assert expected[-1] == IGNORE_INDEX and expected[rationale.target_start - 1] != IGNORE_INDEX


def test_answer_index_decodes_to_the_answer_under_every_rationale(questions, tokenizer, records):
    batch = pack_questions(questions, k=3)
    assert batch.answer_index.shape == (sum(len(q.answer_ids) for q in questions), 3)
    assert batch.answer_index.dtype == torch.long
    group = 0
    for question, record in zip(questions, records):
        rows = batch.answer_index[group:group + len(question.answer_ids)]
        group += len(question.answer_ids)
        present = len(record.rationales)
        assert (rows[:, present:] == -1).all() and (rows[:, :present] >= 0).all()
        for k in range(present):
            positions = rows[:, k]
            assert tokenizer.decode(batch.labels[positions].tolist()).strip() == record.answer
            # each row predicts the next token of its own sequence
            assert (batch.input_ids[positions + 1] == batch.labels[positions]).all()
            assert (batch.position_ids[positions + 1] == batch.position_ids[positions] + 1).all()
    assert torch.equal(batch.answer_valid, batch.answer_index >= 0)


def test_answer_index_width_is_k(questions):
    assert pack_questions(questions).answer_index.shape[1] == 3
    assert pack_questions(questions, k=5).answer_index[:, 3:].eq(-1).all()
    with pytest.raises(ValueError, match="k=2 but a question has 3 rationales"):
        pack_questions(questions, k=2)


def test_to_moves_every_tensor(questions):
    batch = pack_questions(questions)
    moved = batch.to("cpu")
    assert moved is not batch and moved.max_seqlen == batch.max_seqlen
    for name in ["input_ids", "position_ids", "cu_seqlens", "labels", "answer_index"]:
        assert torch.equal(getattr(moved, name), getattr(batch, name))
        assert getattr(moved, name).dtype == getattr(batch, name).dtype


def test_best_fit_decreasing_puts_an_item_into_the_fullest_bin_that_holds_it():
    # 8, 7, 5 open three bins (room 2, 3, 5); 4 joins the 5 (room 1); 1 then goes to the bin
    # with room 1, where first-fit would have chosen the first bin.
    assert best_fit_decreasing([5, 8, 1, 7, 4], 10, range(5)) == [[1], [3], [0, 4, 2]]


@pytest.mark.parametrize("max_tokens", [None, 2])
def test_sampler_keeps_questions_whole_under_the_budget(questions, max_tokens):
    lengths = [question.num_tokens for question in questions]
    budget = max(lengths) if max_tokens is None else max_tokens * max(lengths)
    sampler = TokenBudgetBatchSampler(lengths, budget, seed=3)
    loader = DataLoader(questions, batch_sampler=sampler, collate_fn=pack_questions)
    seen = []
    for indices, batch in zip(sampler, loader):
        seen += indices
        assert batch.input_ids.numel() == sum(lengths[i] for i in indices) <= budget
        # every rationale of each question of the batch is in it
        assert batch.answer_valid.sum().item() == sum(
            len(questions[i].rationales) * len(questions[i].answer_ids) for i in indices)
    assert sorted(seen) == list(range(len(questions)))
    assert len(loader) == len(sampler) <= len(questions)


def test_sampler_order_changes_with_the_epoch_not_the_batches():
    lengths = [5, 8, 1, 7, 4, 9, 2, 6, 3, 10] * 3
    sampler = TokenBudgetBatchSampler(lengths, 12, seed=0)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)
    assert all(sum(lengths[i] for i in batch) <= 12 for batch in epoch0)
    assert list(TokenBudgetBatchSampler(lengths, 12, shuffle=False)) == TokenBudgetBatchSampler(
        lengths, 12, shuffle=False).batches


def test_sampler_rejects_a_question_over_the_budget():
    with pytest.raises(ValueError, match="question 1 has 13 tokens, more than max_tokens=12"):
        TokenBudgetBatchSampler([4, 13], 12)
