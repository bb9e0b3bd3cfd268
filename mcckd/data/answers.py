"""Answers: the task list, reading the final answer out of a rationale, comparing answers.

Numeric tasks (gsm8k, svamp, asdiv): the answer is the number in the sentence that follows the
last cue ("answer is", "Therefore", "So"): the first number after its last "=" when the
sentence has one, else its first number; with no cue, or none in its sentence, the last number
of the text. Digits come first; number words ("three") count where there are none. Numbers
are normalised: `1,200` -> `1200`, `$18` -> `18`, `18.0` -> `18`, `3.50` -> `3.5`, `3/4` ->
`0.75` (a fraction that has no exact decimal stays `a/b`, reduced).
Multiple choice (csqa, letters A-E): the letter after "answer is", else the last `(C)`, else
the text of a choice listed in the question found after the last cue.
Yes/no (strategyqa): the first yes or no after the last cue, else a leading yes or no.
"""
import re
from fractions import Fraction

TASK_KINDS = {
    "gsm8k": "numeric",
    "svamp": "numeric",
    "asdiv": "numeric",
    "csqa": "choice",
    "strategyqa": "yesno",
}
TASKS = tuple(TASK_KINDS)

# "So" only capitalised: lower-case "so" is mostly "so that" / "and so on" inside a sentence.
CUE = re.compile(r"(?i:answer is)|(?i:\btherefore\b)|\bSo\b")
SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
# A minus sign only when glued to the digits and not a subtraction ("102 - 35", "x-4").
NUMBER = re.compile(
    r"(?<![\w)\].])(?P<sign>-)?\$?(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
    r"(?:\.(?P<decimals>\d+))?(?:/(?P<denominator>0*[1-9]\d*))?"
)
UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORD_VALUES = {
    **{word: value for value, word in enumerate(UNITS)},
    **{word: 20 + 10 * i for i, word in enumerate(TENS)},
}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1000000}
NUMBER_WORDS = re.compile(
    r"\b(?:{0})(?:(?:[\s-]+(?:and[\s-]+)?)(?:{0}))*\b".format("|".join([*NUMBER_WORD_VALUES, *SCALES])),
    re.IGNORECASE,
)
LETTER_AFTER_ANSWER_IS = re.compile(r"(?i:answer is)\s*:?\s*\(?([A-E])\b")
LETTER_IN_PARENTHESES = re.compile(r"\(([A-E])\)")
# "Answer Choices:\nA. bank\nB. library" or "(A) bank (B) library" inside the question.
CHOICE_LINE = re.compile(r"^\s*\(?([A-E])[.)]\s*(.+?)\s*$", re.MULTILINE)
CHOICE_INLINE = re.compile(r"\(([A-E])\)\s*(.+?)\s*(?=\([A-E]\)|$)", re.DOTALL)
YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
YES_NO_ALIASES = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
# A closing "Therefore, the answer is 18." (or "So the final answer is (C)") on the last line.
CLOSING_ANSWER_SENTENCE = re.compile(
    r"(?:(?:\b(?:therefore|thus|hence|so)\b,?\s+)?the\s+(?:final\s+)?answer\s+is\b[^\n]*)$", re.IGNORECASE
)


def task_kind(task):
    """"numeric", "choice" or "yesno"; ValueError for an unknown task."""
    if task not in TASK_KINDS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    return TASK_KINDS[task]


def extract_answer(text, task, *, question=None):
    """The final answer stated in `text` (a rationale or a model's output), normalised, or None.

    For csqa, `question` (with its listed choices) lets a choice's text stand for its letter.
    """
    kind = task_kind(task)
    if kind == "numeric":
        return extract_number(text)
    if kind == "choice":
        return extract_choice(text, parse_choices(question) if question else {})
    return extract_yes_no(text)


def normalize_answer(answer, task):
    """A gold answer in the form `extract_answer` returns, or None when it is not one."""
    kind = task_kind(task)
    text = str(answer).strip()
    if kind == "numeric":
        match = NUMBER.fullmatch(text.rstrip(".").strip())
        return number_text(match) if match else None
    if kind == "choice":
        match = re.fullmatch(r"\(?([A-Ea-e])[.)]?", text)
        return match.group(1).upper() if match else None
    return YES_NO_ALIASES.get(text.lower().rstrip("."))


def answers_match(pred, gold, task):
    """Whether two normalised answers agree: numerically for numeric tasks (to 1e-6 relative)."""
    if pred is None or gold is None:
        return False
    if task_kind(task) != "numeric":
        return pred == gold
    try:
        a, b = Fraction(pred), Fraction(gold)
    except (ValueError, ZeroDivisionError):
        return pred == gold
    return abs(a - b) <= Fraction(1, 10**6) * max(1, abs(b))


def strip_answer_sentence(text):
    """`text` without a closing answer sentence: the training text appends its own fixed one
    (docs/design.md, "Data"). Unchanged when nothing would remain."""
    text = text.rstrip()
    match = CLOSING_ANSWER_SENTENCE.search(text)
    stripped = text[:match.start()].rstrip() if match else text
    return stripped or text


def cue_sentence(text):
    """The text from the last cue to the end of its sentence, or None when there is no cue."""
    cues = list(CUE.finditer(text))
    if not cues:
        return None
    start = cues[-1].end()
    end = SENTENCE_END.search(text, start)
    return text[start:end.start() if end else len(text)]


def extract_number(text):
    """The numeric answer of `text` (see the module docstring), normalised, or None."""
    sentence = cue_sentence(text)
    if sentence is not None:
        for part in (sentence.rsplit("=", 1)[-1], sentence):
            answer = first_number(part)
            if answer is not None:
                return answer
    return last_number(text)


def first_number(text):
    """The first number written in digits, else in words, normalised; or None."""
    match = NUMBER.search(text)
    if match:
        return number_text(match)
    words = NUMBER_WORDS.search(text)
    return str(number_word_value(words.group(0))) if words else None


def last_number(text):
    """The last number written in digits, else in words, normalised; or None."""
    numbers = list(NUMBER.finditer(text))
    if numbers:
        return number_text(numbers[-1])
    words = list(NUMBER_WORDS.finditer(text))
    return str(number_word_value(words[-1].group(0))) if words else None


def number_text(match):
    """Normalised text of a NUMBER match: no commas or $, no trailing zeros, fractions reduced."""
    value = Fraction(match.group("digits").replace(",", "") + "." + (match.group("decimals") or "0"))
    if match.group("denominator"):
        value /= int(match.group("denominator"))
    if match.group("sign"):
        value = -value
    return fraction_text(value)


def fraction_text(value):
    """`value` as a plain decimal when it has an exact one (18, 3.5, 0.75), else "a/b"."""
    denominator = value.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(scaled, 10**places)
    return f"{sign}{whole}" + (f".{fraction:0{places}d}" if places else "")


def number_word_value(words):
    """The value of a run of number words: "twenty-one" -> 21, "three hundred and five" -> 305."""
    total = current = 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word in NUMBER_WORD_VALUES:
            current += NUMBER_WORD_VALUES[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in SCALES:
            total += max(current, 1) * SCALES[word]
            current = 0
    return total + current


def parse_choices(question):
    """The answer choices listed in a question, {letter: text}; {} when it lists none."""
    _, marker, listed = question.partition("Answer Choices:")
    text = listed if marker else question
    choices = {letter: choice for letter, choice in CHOICE_LINE.findall(text)}
    if len(choices) < 2:
        choices = {letter: choice.strip() for letter, choice in CHOICE_INLINE.findall(text)}
    return choices if len(choices) >= 2 else {}


def extract_choice(text, choices):
    """The letter A-E that `text` settles on, or None; `choices` maps letters to their texts."""
    after_answer_is = list(LETTER_AFTER_ANSWER_IS.finditer(text))
    if after_answer_is:
        return after_answer_is[-1].group(1)
    in_parentheses = list(LETTER_IN_PARENTHESES.finditer(text))
    if in_parentheses:
        return in_parentheses[-1].group(1)
    sentence = cue_sentence(text)
    return choice_named_in(sentence, choices) if sentence and choices else None


def choice_named_in(sentence, choices):
    """The letter of the choice whose text comes first in `sentence` (the longer on a tie)."""
    found = []
    for letter, choice in choices.items():
        match = re.search(r"\b" + re.escape(choice) + r"\b", sentence, re.IGNORECASE)
        if match:
            found.append((match.start(), -len(choice), letter))
    return min(found)[2] if found else None


def extract_yes_no(text):
    """"yes" or "no": the first after the last cue, else the one the text opens with; or None."""
    sentence = cue_sentence(text)
    if sentence is not None:
        match = YES_NO.search(sentence)
        if match:
            return match.group(1).lower()
    opening = YES_NO.match(text.lstrip())
    return opening.group(1).lower() if opening else None
