"""A small BPE tokenizer trained on the fly (the demo's and the tests' students; no downloads)."""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_word_tokenizer(texts, vocab_size=512, *, split_digits=True):
    """A byte-level BPE tokenizer fitted to `texts`, by default with digits split one by one.

    Returns a transformers `PreTrainedTokenizerFast` with pad, bos, eos and unk tokens, ready
    for `save_pretrained`. Splitting digits keeps every number's tokens the same in any context.
    With split_digits=False, a number is merged like a word: frequent small numbers become one
    token each (with their leading space), which a tiny student learns to copy and add much
    sooner than digit strings (the demo).
    """
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
