"""What lies under a student: the transformers model under an optional peft wrapper, its kind,
its blocks and its output layer."""


def causal_lm(model):
    """The transformers model under an optional peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_encoder_decoder(model):
    """Whether the student is an encoder-decoder (T5): padded batches, no packing."""
    return bool(getattr(causal_lm(model).config, "is_encoder_decoder", False))


def transformer_blocks(model):
    """The model's repeated blocks (decoder layers): the modules whose class transformers lists
    in `_no_split_modules`, in order."""
    names = set(causal_lm(model)._no_split_modules or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def output_layer(model):
    """The lm_head (a Linear): its weight [V, d] and bias (usually None) feed the fused loss."""
    return causal_lm(model).get_output_embeddings()


def decoder_start_id(model):
    """The decoder start token of an encoder-decoder student; None for a decoder-only one."""
    return causal_lm(model).config.decoder_start_token_id if is_encoder_decoder(model) else None
