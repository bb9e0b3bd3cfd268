"""The micro-batch stream of a training run: epoch e in the order drawn from (seed, e).

A step's data is a function of its number, which is what lets a resumed run continue exactly:
step s of process r takes micro-batches s*A*W + r*A .. s*A*W + r*A + A-1 of the stream (A
micro-batches a step on each of W processes).
"""
from mcckd.data.packing import TokenBudgetBatchSampler, pack_questions
from mcckd.data.prompts import bind_format, format_from_config
from mcckd.data.seq2seq import pad_seq2seq
from mcckd.data.tokenize import tokenize_records
from mcckd.errors import InputError


class MicroBatches:
    """The run's stream of micro-batches: epoch e in the order drawn from (seed, e).

    config: the run's Config (data and train sections; data's prompt format keys say how a
    question and its rationales become sequences); rank, world_size: this process's place.
    decoder_start_id: None for a decoder-only student (packed batches), else the encoder-decoder
    student's decoder start token (padded batches).
    """

    def __init__(self, config, records, tokenizer, *, rank=0, world_size=1, decoder_start_id=None):
        data, cfg = config.data, config.train
        prompt_format = format_from_config(data)
        questions, dropped = tokenize_records(records, tokenizer, prompt_format=prompt_format,
                                              max_length=data.max_length)
        if not questions:
            raise InputError(f"{data.train}: no question keeps a rationale of at most "
                             f"data.max_length={data.max_length} tokens ({dropped})")
        for question in questions:
            del question.rationales[data.num_rationales:]
        self.questions, self.dropped, self.k = questions, dropped, data.num_rationales
        self.per_step = cfg.grad_accum * world_size
        self.offset = rank * cfg.grad_accum
        self.grad_accum = cfg.grad_accum
        self.sampler = TokenBudgetBatchSampler(
            [q.num_tokens for q in questions], data.max_tokens, seed=cfg.seed
        )
        self.epoch, self.order = None, None
        self.collate = self.packed
        if decoder_start_id is not None:
            self.collate = self.padded
            self.prompts = seq2seq_prompts(records, questions, tokenizer, prompt_format)
            self.pad_id, self.start_id = tokenizer.pad_token_id, decoder_start_id

    def total_steps(self, cfg):
        """train.max_steps, or the whole steps in train.epochs passes over the data."""
        steps = cfg.max_steps or int(cfg.epochs * len(self.sampler)) // self.per_step
        if steps < 1:
            raise InputError(
                f"train.epochs={cfg.epochs} gives {int(cfg.epochs * len(self.sampler))} micro-batches, "
                f"fewer than the {self.per_step} of one step (train.grad_accum x processes)"
            )
        return steps

    def question_indices(self, m):
        """The question indices of micro-batch m of the stream."""
        epoch, i = divmod(m, len(self.sampler))
        if epoch != self.epoch:
            self.sampler.set_epoch(epoch)
            self.epoch, self.order = epoch, list(self.sampler)
        return self.order[i]

    def indices_for_step(self, step):
        """Question indices of this process's micro-batches of step `step`."""
        start = step * self.per_step + self.offset
        return [self.question_indices(m) for m in range(start, start + self.grad_accum)]

    def for_step(self, step):
        """This process's micro-batches of optimizer step `step` (CPU tensors)."""
        return [self.collate([self.questions[i] for i in indices]) for indices in self.indices_for_step(step)]

    def tokens_for_step(self, step):
        """Tokens (all K rationales, prompts included) in this process's micro-batches of `step`."""
        return sum(self.questions[i].num_tokens for indices in self.indices_for_step(step) for i in indices)

    def packed(self, questions):
        """A decoder-only micro-batch: one packed stream."""
        return pack_questions(questions, self.k)

    def padded(self, questions):
        """An encoder-decoder micro-batch: padded rows."""
        return pad_seq2seq(questions, [self.prompts[q.id] for q in questions], self.k,
                           pad_id=self.pad_id, decoder_start_id=self.start_id)


def seq2seq_prompts(records, questions, tokenizer, prompt_format):
    """{question id: encoder ids}: the prompt as evaluation encodes it."""
    kept = {q.id for q in questions}
    bound = bind_format(tokenizer, prompt_format, encoder_decoder=True)
    records = [r for r in records if r.id in kept]
    return dict(zip((r.id for r in records), bound.prompts_ids([r.question for r in records])))
