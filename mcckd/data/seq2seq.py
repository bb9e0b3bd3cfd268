"""Encoder-decoder students (T5, FlanT5): padded batches (the forward: `mcckd.models.seq2seq`).

The question goes into the encoder (the evaluation prompt, `mcckd.data.tokenize.encode_prompt`),
the target (rationale, answer sentence, answer, tail, EOS: everything after the prompt of a
`TokenizedRationale`) into the decoder, shifted right behind the decoder start token:

    decoder_input_ids = [start] + target[:-1]        labels = target

so decoder position p predicts labels[p], and answer token j of a rationale sits at position
answer_start - target_start + j. Each of a question's rationales is one row of the batch (the
prompt repeated); labels and answer_index address the flattened [B * Ld] decoder positions,
which is what the fused MCC-KD loss takes, as for a packed decoder-only batch.
"""
from dataclasses import dataclass, fields

import torch

from mcckd.data.packing import IGNORE_INDEX
from mcckd.data.padding import pad_rows


@dataclass
class Seq2SeqBatch:
    """B rows (one per rationale), encoder length Le, decoder length Ld, G groups of K.

    input_ids, attention_mask                  [B, Le] long (right-padded)
    decoder_input_ids, decoder_attention_mask  [B, Ld] long
    labels        [B * Ld] long   the target of each decoder position, IGNORE_INDEX on padding
    answer_index  [G, K] long     flattened decoder positions of the answer tokens, -1 missing
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    decoder_input_ids: torch.Tensor
    decoder_attention_mask: torch.Tensor
    labels: torch.Tensor
    answer_index: torch.Tensor

    def to(self, device, non_blocking=False):
        """The same batch on `device`."""
        return Seq2SeqBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                               for f in fields(self)})


def pad_seq2seq(questions, prompts, k, *, pad_id, decoder_start_id):
    """A Seq2SeqBatch of TokenizedQuestions; prompts[i] are question i's encoder ids."""
    encoder_rows, decoder_rows, label_rows, groups = [], [], [], []
    for question, prompt in zip(questions, prompts):
        question_groups = [[-1] * k for _ in question.answer_ids]
        for column, rationale in enumerate(question.rationales):
            target = rationale.input_ids[rationale.target_start:]
            for j, group in enumerate(question_groups):
                group[column] = (len(decoder_rows), rationale.answer_start - rationale.target_start + j)
            encoder_rows.append(prompt)
            decoder_rows.append([decoder_start_id] + target[:-1])
            label_rows.append(target)
        groups.extend(question_groups)
    input_ids, attention_mask = pad_rows(encoder_rows, pad_id)
    decoder_input_ids, decoder_attention_mask = pad_rows(decoder_rows, pad_id)
    labels, _ = pad_rows(label_rows, IGNORE_INDEX)
    width = labels.shape[1]
    answer_index = torch.tensor([[-1 if cell == -1 else cell[0] * width + cell[1] for cell in group]
                                 for group in groups], dtype=torch.long).reshape(len(groups), k)
    return Seq2SeqBatch(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                        labels.flatten(), answer_index)
