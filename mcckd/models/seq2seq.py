"""The forward of an encoder-decoder student (T5) over a padded `Seq2SeqBatch`."""
from mcckd.models.wrappers import causal_lm


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
