"""Batched generation from token-id prompts: greedy decoding with a KV cache, or sampling with
the same batching (self-consistency in `mcckd eval`, `mcckd generate --local`)."""
import contextlib

from tqdm import tqdm
from transformers import GenerationConfig

from mcckd.data.padding import pad_rows
from mcckd.models.attention import attention_backend, transformers_attention
from mcckd.models.export import eos_token_ids


def generation_attention(model):
    """transformers' own attention for the duration of generation when the model trains with a
    packed backend of `mcckd.models.attention`, which serves packed batches only."""
    return transformers_attention(model) if attention_backend(model) else contextlib.nullcontext()


def generate_greedy(model, tokenizer, prompts, *, batch_size=16, max_new_tokens=256, progress=False,
                    stop_ids=()):
    """The greedy continuation of each token-id prompt, decoded without special tokens, in order;
    `stop_ids` end generation as EOS does (a chat template's end of turn)."""
    config = greedy_config(model, tokenizer, max_new_tokens, padding_id(tokenizer), stop_ids=stop_ids)
    texts = [None] * len(prompts)
    with tqdm(total=len(prompts), desc="eval", unit="question", disable=not progress) as bar:
        for indices, outputs in generate_batches(model, tokenizer, prompts, config, batch_size=batch_size):
            for index, (text,) in zip(indices, outputs):
                texts[index] = text
            bar.update(len(indices))
    return texts


def generate_batches(model, tokenizer, prompts, config, *, batch_size):
    """Generate from token-id prompts `batch_size` at a time; yields (indices, outputs) per batch.

    outputs[j] holds the `config.num_return_sequences` decoded continuations of
    prompts[indices[j]]. Decoder-only prompts are left-padded, so every row continues from the
    same column. The longest prompts go first: batches hold prompts of similar length, and a
    batch that runs out of memory does so at once.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    left_pad = not model.config.is_encoder_decoder
    device = next(model.parameters()).device
    per_prompt = config.num_return_sequences or 1
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        input_ids, attention_mask = pad_rows(
            [prompts[i] for i in indices], config.pad_token_id, left=left_pad
        )
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        if left_pad:
            output = output[:, input_ids.shape[1]:]  # a decoder-only output repeats its prompt
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        yield indices, [texts[j * per_prompt:(j + 1) * per_prompt] for j in range(len(indices))]


def padding_id(tokenizer):
    """The id that fills padding: the pad token, else EOS (masked out either way)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


def greedy_config(model, tokenizer, max_new_tokens, pad_id, *, stop_ids=()):
    """Greedy decoding with a KV cache, stopping at the tokenizer's or the model's EOS, or at
    one of `stop_ids`.

    A fresh config rather than the model's: a checkpoint's sampling defaults must not apply.
    """
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=sorted({*eos_token_ids(model.generation_config, tokenizer), *stop_ids}) or None,
        decoder_start_token_id=model.generation_config.decoder_start_token_id,
    )


def sampling_config(model, tokenizer, max_new_tokens, *, num_samples, temperature, stop_ids=()):
    """`num_samples` continuations per prompt sampled from the full distribution at
    `temperature` (no top-k or top-p cut), otherwise as `greedy_config`."""
    config = greedy_config(model, tokenizer, max_new_tokens, padding_id(tokenizer), stop_ids=stop_ids)
    config.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                  num_return_sequences=num_samples)
    return config
