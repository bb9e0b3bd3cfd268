"""Packing: the sequences of a step's questions as one flat token stream, and the batches.

All K rationales of every question in a batch are concatenated into one stream of N tokens,
with no padding; `cu_seqlens` marks where each sequence starts, and attention must stay inside
a sequence. For a question whose answer is A tokens long there are A aligned groups: group j
holds, for each rationale k, the position t whose logits predict answer token j, so
labels[t] is that token under every k. The consistency loss compares the K rows of a group.

The batch sampler fills a token budget per batch with whole questions (all their rationales),
by best-fit decreasing: longest question first, each into the fullest batch it still fits.
"""
import bisect
import random
from dataclasses import dataclass, fields

import torch
from torch.utils.data import Sampler

from mcckd.data.tokenize import TokenizedQuestion

IGNORE_INDEX = -100


@dataclass
class PackedBatch:
    """A packed batch of S sequences, N tokens, G answer groups, K rationales per question.

    input_ids     [N] long   the tokens of all sequences, one after another
    position_ids  [N] long   position inside its sequence, 0 at each sequence's start
    cu_seqlens    [S+1] int32  sequence s is input_ids[cu_seqlens[s]:cu_seqlens[s+1]]
    labels        [N] long   labels[t] = input_ids[t+1] when t+1 is a target token of the same
                             sequence, else ignore_index (the prompt, each sequence's last token)
    answer_index  [G, K] long  answer_index[g, k]: the position whose logits predict answer
                             token g under rationale k of its question; -1 where the question
                             has fewer than k+1 rationales
    max_seqlen    int        the longest sequence (what varlen attention kernels ask for)
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    labels: torch.Tensor
    answer_index: torch.Tensor
    max_seqlen: int

    @property
    def answer_valid(self):
        """[G, K] bool: which rows of answer_index hold a position."""
        return self.answer_index >= 0

    def to(self, device, non_blocking=False):
        """The same batch with every tensor on `device`."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = (
                value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value
            )
        return PackedBatch(**moved)


def pack_questions(
    questions: list[TokenizedQuestion], k: int | None = None, *, ignore_index: int = IGNORE_INDEX
) -> PackedBatch:
    """All rationales of `questions` packed into one stream, with their aligned answer groups.

    Args:
        questions: tokenized questions (`mcckd.data.tokenize`), each with 1..k rationales.
        k: K, the width of answer_index (default: the most rationales of any question).
        ignore_index: the label of positions with no target.

    Returns:
        A PackedBatch of N tokens in S sequences (one per rationale) and G answer groups (one
        per answer token of each question); see its fields for the shapes.
    """
    if not questions:
        raise ValueError("no questions to pack")
    most = max(len(question.rationales) for question in questions)
    k = most if k is None else k
    if most > k:
        raise ValueError(f"k={k} but a question has {most} rationales: select at most k first")
    input_ids, position_ids, labels, cu_seqlens, answer_rows = [], [], [], [0], []
    for question in questions:
        groups = [[-1] * k for _ in question.answer_ids]
        for row, rationale in enumerate(question.rationales):
            start = len(input_ids)
            append_sequence(rationale, input_ids, position_ids, labels, ignore_index)
            cu_seqlens.append(len(input_ids))
            for j, group in enumerate(groups):
                # the logits at position p predict the token at p + 1
                group[row] = start + rationale.answer_start + j - 1
        answer_rows.extend(groups)
    lengths = [end - start for start, end in zip(cu_seqlens, cu_seqlens[1:])]
    return PackedBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        position_ids=torch.tensor(position_ids, dtype=torch.long),
        cu_seqlens=torch.tensor(cu_seqlens, dtype=torch.int32),
        labels=torch.tensor(labels, dtype=torch.long),
        answer_index=torch.tensor(answer_rows, dtype=torch.long).reshape(len(answer_rows), k),
        max_seqlen=max(lengths),
    )


def append_sequence(rationale, input_ids, position_ids, labels, ignore_index):
    """Append one TokenizedRationale's tokens, positions and next-token labels to the stream."""
    ids = rationale.input_ids
    input_ids.extend(ids)
    position_ids.extend(range(len(ids)))
    # position t is trained to predict ids[t + 1] when that token belongs to the target
    first_trained = max(rationale.target_start - 1, 0)
    labels.extend([ignore_index] * first_trained)
    labels.extend(ids[first_trained + 1:])
    labels.append(ignore_index)


class TokenBudgetBatchSampler(Sampler):
    """Batches of question indices, each holding at most `max_tokens` tokens in all.

    lengths[i] is question i's total tokens over its rationales (`TokenizedQuestion.num_tokens`),
    so a question's rationales are never split. The batches are packed once, best-fit
    decreasing (equal lengths in an order drawn from `seed`); with `shuffle` their order is
    drawn anew each epoch (`set_epoch`). Use it as a DataLoader's `batch_sampler`.
    """

    def __init__(self, lengths, max_tokens, *, shuffle=True, seed=0):
        super().__init__()
        too_long = [i for i, length in enumerate(lengths) if length > max_tokens]
        if too_long:
            i = too_long[0]
            raise ValueError(f"question {i} has {lengths[i]} tokens, more than max_tokens={max_tokens}")
        tie_order = list(range(len(lengths)))
        random.Random(seed).shuffle(tie_order)
        self.batches = best_fit_decreasing(lengths, max_tokens, tie_order)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        """Draw the order of the next iteration from (seed, epoch)."""
        self.epoch = epoch

    def __iter__(self):
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        for b in order:
            yield list(self.batches[b])

    def __len__(self):
        return len(self.batches)


def best_fit_decreasing(lengths, capacity, order):
    """Bins (lists of indices) of total length <= capacity: the items in decreasing length
    (ties in `order`), each into the bin with the least room that still holds it."""
    bins, rooms = [], []  # rooms: sorted (room left, bin number)
    for i in sorted(order, key=lambda i: -lengths[i]):
        at = bisect.bisect_left(rooms, (lengths[i], -1))
        if at == len(rooms):
            bins.append([i])
            bisect.insort(rooms, (capacity - lengths[i], len(bins) - 1))
        else:
            room, b = rooms.pop(at)
            bins[b].append(i)
            bisect.insort(rooms, (room - lengths[i], b))
    return bins
