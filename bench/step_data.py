"""The data of bench/train_step.py: questions of real lengths in the micro-batches a run makes,
and the layouts the providers take.

Lengths come from bench/lengths.json (bench/measure_lengths.py measured them on teacher
rationales): per question a prompt length, an answer length and a number of rationales, per
rationale a target length, each drawn from its histogram (a bin by its count, then a length
uniformly inside it). Token ids are random; the answer's ids are shared by the rationales of a
question, as the training data's are. Micro-batches are whole questions under a token budget,
packed by mcckd's own sampler (best-fit decreasing), so every provider sees the same questions
in the same micro-batches:

- mcckd: the PackedBatch itself (one stream, no padding);
- padded (Hugging Face): one row per rationale, right-padded to the longest row of the
  micro-batch (a multiple of 8), attention_mask, labels and answer_index over the flat rows;
- position_ids packing (Hugging Face, padding-free): the PackedBatch's stream as [1, N].
"""
import json
import random
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from mcckd.data import (
    IGNORE_INDEX,
    PackedBatch,
    TokenBudgetBatchSampler,
    TokenizedQuestion,
    TokenizedRationale,
    pack_questions,
)
from mcckd.models.packed import PackedSequences

LENGTHS = Path(__file__).with_name("lengths.json")
TAIL = 2  # "." and EOS after the answer


@dataclass
class LengthDistribution:
    """One measured distribution of bench/lengths.json."""

    prompt: dict
    target: dict
    answer: dict
    rationales: dict  # number of rationales -> questions

    @classmethod
    def load(cls, name="svamp", path=LENGTHS):
        entry = json.loads(Path(path).read_text(encoding="utf-8"))["distributions"][name]
        counts = {int(k): v for k, v in entry["rationales_per_question"].items()}
        return cls(entry["prompt_tokens"], entry["target_tokens"], entry["answer_tokens"], counts)

    @staticmethod
    def draw(histogram, rng):
        """A length: a bin with probability proportional to its count, then uniform inside it."""
        counts = histogram["counts"]
        (bin_index,) = rng.choices(range(len(counts)), weights=counts)
        return histogram["first"] + bin_index * histogram["bin_width"] + rng.randrange(histogram["bin_width"])

    def question(self, qid, vocab_size, K, rng, scale=1.0):
        """A TokenizedQuestion of drawn lengths (each multiplied by `scale`) and random ids."""
        def ids(n):
            return [rng.randrange(vocab_size) for _ in range(n)]

        prompt = ids(max(2, round(scale * self.draw(self.prompt, rng))))
        answer = ids(max(1, round(scale * self.draw(self.answer, rng))))
        tail = ids(TAIL)
        (count,) = rng.choices(list(self.rationales), weights=list(self.rationales.values()))
        question = TokenizedQuestion(f"q{qid}", answer)
        for _ in range(min(count, K)):
            target = max(len(answer) + TAIL + 1, round(scale * self.draw(self.target, rng)))
            body = ids(target - len(answer) - TAIL)
            question.rationales.append(
                TokenizedRationale(prompt + body + answer + tail, len(prompt), len(prompt) + len(body)))
        return question


def draw_micro_batches(distribution, vocab_size, *, count, micro_batch_tokens, K, seed, scale=1.0):
    """`count` PackedBatches of whole questions, each within micro_batch_tokens tokens.

    A pool of questions about 1.5 times what the micro-batches hold is packed by
    TokenBudgetBatchSampler; the first `count` micro-batches of its shuffled order are kept.
    """
    rng = random.Random(seed)
    questions, total = [], 0
    while total < 1.5 * count * micro_batch_tokens:
        questions.append(distribution.question(len(questions), vocab_size, K, rng, scale))
        total += questions[-1].num_tokens
    sampler = TokenBudgetBatchSampler([q.num_tokens for q in questions], micro_batch_tokens, seed=seed)
    batches = [pack_questions([questions[i] for i in indices], K) for indices in sampler]
    if len(batches) < count:
        raise ValueError(f"{len(batches)} micro-batches drawn, {count} wanted")
    return batches[:count]


def sequence_lengths(batch: PackedBatch):
    """The lengths of the batch's sequences, a list of ints."""
    return (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()


@dataclass
class PaddedBatch:
    """A micro-batch as S right-padded rows of L tokens.

    input_ids [S, L] long, attention_mask [S, L] long (1 on real tokens), labels [S*L] long
    (IGNORE_INDEX on padding), answer_index [G, K] long (positions in the flat [S*L] rows, -1
    where missing).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    answer_index: torch.Tensor

    def to(self, device):
        return PaddedBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


def padded(batch: PackedBatch, *, pad_id=0, multiple=8) -> PaddedBatch:
    """The PackedBatch's sequences as right-padded rows, each token at (its row, its position)."""
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long()
    rows = len(lengths)
    width = -(-batch.max_seqlen // multiple) * multiple
    row_of_token = torch.repeat_interleave(torch.arange(rows), lengths)
    flat = row_of_token * width + batch.position_ids
    input_ids = torch.full((rows * width,), pad_id, dtype=torch.long)
    input_ids[flat] = batch.input_ids
    mask = torch.zeros(rows * width, dtype=torch.long)
    mask[flat] = 1
    labels = torch.full((rows * width,), IGNORE_INDEX, dtype=torch.long)
    labels[flat] = batch.labels
    answer_index = torch.where(batch.answer_index >= 0, flat[batch.answer_index.clamp(min=0)], -1)
    return PaddedBatch(input_ids.view(rows, width), mask.view(rows, width), labels, answer_index)


def block_causal_mask(batch: PackedBatch):
    """[1, 1, N, N] bool, True where token q may attend token k: same sequence and k <= q."""
    return PackedSequences.from_cu_seqlens(batch.cu_seqlens, batch.max_seqlen).dense_mask(None)[None, None]
