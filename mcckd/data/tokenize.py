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
    if bound.closing is None:
        raise ValueError("the tokenizer has no EOS token: the target must end in one")
    prompt = bound.prompt_ids(record.question)
    answer_ids = bound.answer_ids(record.answer)
    ending = answer_ids + bound.tail + bound.closing
    question = TokenizedQuestion(record.id, answer_ids)
    too_long = 0
    for text in record.rationales:
        head = prompt + bound.opening + bound.rationale_ids(text) + bound.sentence
        if max_length is not None and len(head) + len(ending) > max_length:
            too_long += 1
            continue
        question.rationales.append(TokenizedRationale(head + ending, len(prompt), len(head)))
    return question, too_long


def tokenize_records(records, tokenizer, *, prompt_format=PLAIN, max_length=None, progress=False):
    """TokenizedQuestions of the records that keep a rationale, and counts of what was dropped:
    {"rationale too long": ..., "question without rationales": ...}."""
    bound = bind_format(tokenizer, prompt_format)
    questions, dropped = [], {"rationale too long": 0, "question without rationales": 0}
    for record in tqdm(records, desc="tokenising", unit="question", disable=not progress):
        question, too_long = tokenize_with(record, bound, max_length=max_length)
        dropped["rationale too long"] += too_long
        if question.rationales:
            questions.append(question)
        else:
            dropped["question without rationales"] += 1
    return questions, dropped
