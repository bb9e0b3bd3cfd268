"""Tokenisation: a question's rationales as token sequences that share one answer span.

Each sequence is [BOS] prompt | rationale | answer sentence | answer | tail | EOS, with the
default template

    prompt   "Question: {question}\\nAnswer:"
    target   " {rationale}\\nTherefore, the answer is" + " {answer}" + "." + EOS

Every segment is tokenised on its own and the ids are joined, so the answer's ids are the same
under every rationale (tokenising the joined text would let a BPE merge across a boundary).
Those ids are the common answer span; `answer_start` is where it begins in each sequence. The
target is everything after the prompt. Rationales lose the white space at their ends. A
rationale that does not fit `max_length` is dropped whole and counted: cutting it would cut
the answer sentence that follows it.
"""
from dataclasses import dataclass, field

from tqdm import tqdm


@dataclass(frozen=True)
class PromptTemplate:
    """The text segments of a training sequence; `{question}`, `{rationale}`, `{answer}` are
    filled in. `add_bos` prepends the tokenizer's BOS token when it has one."""

    prompt: str = "Question: {question}\nAnswer:"
    rationale: str = " {rationale}\n"
    answer_sentence: str = "Therefore, the answer is"
    answer: str = " {answer}"
    tail: str = "."
    add_bos: bool = True


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


def encode(tokenizer, text):
    """Token ids of `text` alone, without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer, question, template=PromptTemplate()):
    """The prompt's token ids, BOS first when the template and the tokenizer have one; the same
    ids start every training sequence and every evaluation prompt."""
    bos = [tokenizer.bos_token_id] if template.add_bos and tokenizer.bos_token_id is not None else []
    return bos + encode(tokenizer, template.prompt.format(question=question))


def encode_prompt(tokenizer, question, *, encoder_decoder=False, template=PromptTemplate()):
    """Token ids of the prompt a student is trained and evaluated on.

    Decoder-only: `prompt_ids`. Encoder-decoder: the prompt text with the tokenizer's own
    special tokens (T5 closes with EOS), what the encoder reads.
    """
    if encoder_decoder:
        return list(tokenizer(template.prompt.format(question=question))["input_ids"])
    return prompt_ids(tokenizer, question, template)


def tokenize_record(record, tokenizer, *, template=PromptTemplate(), max_length=None):
    """The TokenizedQuestion of a record and how many rationales were too long for it.

    Sequences longer than `max_length` tokens are dropped, never truncated.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: the target must end in one")
    prompt = prompt_ids(tokenizer, record.question, template)
    answer_ids = encode(tokenizer, template.answer.format(answer=record.answer))
    sentence = encode(tokenizer, template.answer_sentence)
    ending = answer_ids + encode(tokenizer, template.tail) + [tokenizer.eos_token_id]
    question = TokenizedQuestion(record.id, answer_ids)
    too_long = 0
    for text in record.rationales:
        head = prompt + encode(tokenizer, template.rationale.format(rationale=text.strip())) + sentence
        if max_length is not None and len(head) + len(ending) > max_length:
            too_long += 1
            continue
        question.rationales.append(TokenizedRationale(head + ending, len(prompt), len(head)))
    return question, too_long


def tokenize_records(records, tokenizer, *, template=PromptTemplate(), max_length=None, progress=False):
    """TokenizedQuestions of the records that keep a rationale, and counts of what was dropped:
    {"rationale too long": ..., "question without rationales": ...}."""
    questions, dropped = [], {"rationale too long": 0, "question without rationales": 0}
    for record in tqdm(records, desc="tokenising", unit="question", disable=not progress):
        question, too_long = tokenize_record(record, tokenizer, template=template, max_length=max_length)
        dropped["rationale too long"] += too_long
        if question.rationales:
            questions.append(question)
        else:
            dropped["question without rationales"] += 1
    return questions, dropped
