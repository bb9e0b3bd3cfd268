"""Encoder-decoder students (T5, FlanT5): padded batches and the decoder's hidden states.

The question goes into the encoder (the evaluation prompt, `mcckd.evaluate.encode_prompt`),
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

from mcckd.data import IGNORE_INDEX
from mcckd.modeling import causal_lm


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


def pad_rows(rows, value):
    """[len(rows), longest] long tensor of the rows right-padded with `value`, and its mask."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


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


def forward_seq2seq(model, batch):
    """Decoder hidden states [B * Ld, d] of a Seq2SeqBatch, as the student's lm_head sees them.

    T5 scales the decoder output by d_model^-0.5 before its lm_head (when the head is tied to
    the embeddings); the scale is applied here so that the fused loss sees the same logits.
    """
    lm = causal_lm(model)
    encoded = lm.get_encoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    decoded = lm.get_decoder()(input_ids=batch.decoder_input_ids, attention_mask=batch.decoder_attention_mask,
                               encoder_hidden_states=encoded.last_hidden_state,
                               encoder_attention_mask=batch.attention_mask, use_cache=False)
    hidden = decoded.last_hidden_state
    # transformers 5.24 names the switch `scale_decoder_outputs`; before, `tie_word_embeddings`.
    if getattr(lm.config, "scale_decoder_outputs", lm.config.tie_word_embeddings):
        hidden = hidden * lm.config.d_model ** -0.5
    return hidden.flatten(0, 1)
