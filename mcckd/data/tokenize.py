"""Tokenisation: a question's rationales as token sequences that share one answer span.

Each sequence is prompt | opening | rationale | answer sentence | answer | tail | closing, the
pieces of a prompt format (`mcckd.data.prompts`); with the default, plain format

    prompt   [BOS] "Question: {question}\\nAnswer:"
    target   " {rationale}\\n" + "Therefore, the answer is" + " {answer}" + "." + EOS

and with the chat format the prompt is the chat template's, the target the assistant's turn
and the template's end of turn. Every target segment is tokenised on its own and the ids are
joined, so the answer's ids are the same under every rationale (tokenising the joined text
would let a BPE merge across a boundary). Those ids are the common answer span; `answer_start`
is where it begins in each sequence. The target is everything after the prompt. Rationales
lose the white space at their ends. A rationale that does not fit `max_length` is dropped
whole and counted: cutting it would cut the answer sentence that follows it.
"""
from dataclasses import dataclass, field

from tqdm import tqdm

from mcckd.data.prompts import PLAIN, bind_format


@dataclass
class TokenizedRationale:
    """One training sequence: `input_ids` (length L), the first target position
    `target_start` (the prompt is 0..target_start-1) and `answer_start`, where the answer's ids
    begin."""

    input_ids: list[int]
    target_start: int
    answer_start: int


@dataclass
class TokenizedQuestion:
    """A question's sequences; `answer_ids` (length A) sit at `answer_start` in every one."""

    id: str
    answer_ids: list[int]
    rationales: list[TokenizedRationale] = field(default_factory=list)

    @property
    def num_tokens(self):
        """Total tokens over all its sequences."""
        return sum(len(rationale.input_ids) for rationale in self.rationales)


def encode_prompt(tokenizer, question, *, encoder_decoder=False, prompt_format=PLAIN):
    """Token ids of the prompt a student is trained and evaluated on (`BoundFormat.prompt_ids`).

    For many prompts, bind the format once (`mcckd.data.prompts.bind_format`) instead.
    """
    return bind_format(tokenizer, prompt_format, encoder_decoder=encoder_decoder).prompt_ids(question)


def tokenize_record(record, tokenizer, *, prompt_format=PLAIN, max_length=None):
    """The TokenizedQuestion of a record and how many rationales were too long for it.

    Sequences longer than `max_length` tokens are dropped, never truncated.
    """
    return tokenize_with(record, bind_format(tokenizer, prompt_format), max_length=max_length)


def tokenize_with(record, bound, *, max_length=None):
    """`tokenize_record` with a format already bound to the tokenizer (a `BoundFormat`)."""
    return tokenize_batch([record], bound, max_length=max_length)[0]


def tokenize_batch(records, bound, *, max_length=None):
    """[(TokenizedQuestion, rationales too long)] of `records`, each kind of segment (prompts,
    answers, rationales) encoded in one call of the tokenizer."""
    if bound.closing is None:
        raise ValueError("the tokenizer has no EOS token: the target must end in one")
    prompts = bound.prompts_ids([record.question for record in records])
    answers = bound.answers_ids([record.answer for record in records])
    rationales = iter(bound.rationales_ids([text for record in records for text in record.rationales]))
    return [assemble(record, prompt, answer_ids, [next(rationales) for _ in record.rationales], bound,
                     max_length)
            for record, prompt, answer_ids in zip(records, prompts, answers)]


def assemble(record, prompt, answer_ids, rationales, bound, max_length):
    """(TokenizedQuestion, rationales too long) of a record from its segments' ids."""
    ending = answer_ids + bound.tail + bound.closing
    question = TokenizedQuestion(record.id, answer_ids)
    too_long = 0
    for rationale in rationales:
        head = prompt + bound.opening + rationale + bound.sentence
        if max_length is not None and len(head) + len(ending) > max_length:
            too_long += 1
            continue
        question.rationales.append(TokenizedRationale(head + ending, len(prompt), len(head)))
    return question, too_long


def tokenize_records(records, tokenizer, *, prompt_format=PLAIN, max_length=None, progress=False,
                     batch_size=1024):
    """TokenizedQuestions of the records that keep a rationale, and counts of what was dropped:
    {"rationale too long": ..., "question without rationales": ...}; `batch_size` records are
    encoded at a time."""
    bound = bind_format(tokenizer, prompt_format)
    questions, dropped = [], {"rationale too long": 0, "question without rationales": 0}
    with tqdm(total=len(records), desc="tokenising", unit="question", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            for question, too_long in tokenize_batch(batch, bound, max_length=max_length):
                dropped["rationale too long"] += too_long
                if question.rationales:
                    questions.append(question)
                else:
                    dropped["question without rationales"] += 1
            bar.update(len(batch))
    return questions, dropped
