"""Students: loading them (Hugging Face), packed varlen attention, the seq2seq forward, tokenizers.

    student.py         load_student, LoRA
    attention.py       the packed attention backends, registered with transformers on demand
    packed.py          PackedSequences and forward_packed
    seq2seq.py         the decoder hidden states of an encoder-decoder (T5) batch
    build.py           the student a training run starts from (pretrained, random, resumed)
    loading.py         loading a checkpoint folder (full or LoRA) for evaluation and inference
    export.py          a checkpoint as a standalone folder to serve; export_command.py: `mcckd export`
    wrappers.py        what lies under a peft wrapper
    dtypes.py          weight dtypes by name
    word_tokenizer.py  a small BPE tokenizer trained on the fly
"""
