r"""Answers: reading the final answer out of a rationale, normalising it, comparing answers.

Every kind of task (tasks.py) reads a text the same way first: a think block's answer comes
from the text after `</think>`, from inside the block only when that states none; markdown
emphasis is dropped; the last `\boxed{...}` or `#### N` line, when there is one, is the answer
and nothing else is looked at, even when it holds no valid answer (reasoning.py). Otherwise,
by kind:

Numeric: the number in the sentence that follows the last cue ("answer is", "Answer:",
"Therefore", "So"): the first number after its last "=" when the sentence has one, else its
first number; with no cue, or none in its sentence, the last number of the text. Digits come
first; number words ("three") count where there are none; LaTeX fractions are numbers
(numbers.py has the normal form: `1,200` -> `1200`, `3/4` -> `0.75`).
Choice: the letter after the last "answer is", "answer:", "option is" or "choice is", else a
last line that is only a letter, else the last `(C)`, else the text of a choice listed in the
question found after the last cue.
Yes/no: the first yes or no after the last cue, else a last line that is only yes or no, else
a leading yes or no.
String: the text after the last "answer is" or "Answer:", to the end of its line.
Regex: the task's pattern, its last match (no boxed or markdown handling: the pattern decides).
String and regex answers are then normalised by the task's rules.
"""
import functools
import re
import string
from fractions import Fraction

from mcckd.data.numbers import first_number, last_number, whole_number
from mcckd.data.reasoning import answer_passages, final_statement, latex_to_text, strip_emphasis
from mcckd.data.tasks import TASKS, resolve_task

__all__ = ["TASKS", "answers_match", "extract_answer", "normalize_answer", "task_kind"]

# "So" only capitalised: lower-case "so" is mostly "so that" / "and so on" inside a sentence.
CUE = re.compile(r"(?i:answer is)|(?i:\banswer\s*:)|(?i:\btherefore\b)|\bSo\b")
STRING_CUE = re.compile(r"(?i:\banswer\s*(?:is\b|:))")
SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
YES_NO_ALIASES = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
BARE_YES_NO = re.compile(r"\W*(yes|no)\W*", re.IGNORECASE)
ARTICLES = re.compile(r"\b(?:a|an|the)\b", re.IGNORECASE)
PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
ANSWER_EDGES = " \t\n\"'`$.,;:!?*_"


def task_kind(task):
    """The kind of a task (its name or a Task): numeric, choice, yesno, string or regex."""
    return resolve_task(task).kind


def extract_answer(text, task, *, question=None):
    """The final answer stated in `text` (a rationale or a model's output), normalised, or None.

    Args:
        text: what the teacher or the student wrote.
        task: a task name or a Task (`mcckd.data.tasks`).
        question: for choice tasks, the question with its listed choices, so that a choice's
            text stands for its letter.
    """
    task = resolve_task(task)
    choices = parse_choices(question, task.choices) if task.kind == "choice" and question else {}
    for passage in answer_passages(text):
        answer, final = read_passage(passage, task, choices)
        if answer is not None or final:
            return answer
    return None


def read_passage(passage, task, choices):
    r"""(the answer one passage of a text states or None, whether it came from a `oxed{}` or
    `####` statement: such a statement is final even when it holds no valid answer)."""
    if task.kind == "regex":
        matches = list(re.finditer(task.pattern, passage))
        if not matches:
            return None, False
        match = matches[-1]
        group = "answer" if "answer" in match.re.groupindex else 1
        return normalize_text(match.group(group) or "", task), False
    passage = strip_emphasis(passage)
    final = final_statement(passage)
    if final is not None:
        return read_final_statement(latex_to_text(final), task, choices), True
    text = latex_to_text(passage)
    if task.kind == "numeric":
        return extract_number(text), False
    if task.kind == "choice":
        return extract_choice(text, choices, task.choices), False
    if task.kind == "yesno":
        return extract_yes_no(text), False
    return extract_string(text, task), False


def read_final_statement(content, task, choices):
    r"""The answer a `\boxed{}` or `####` statement holds, or None when it holds none."""
    if task.kind == "numeric":
        return first_number(content.rsplit("=", 1)[-1]) or first_number(content)
    if task.kind == "choice":
        letter = re.match(rf"\W*([{task.choices}])(?![A-Za-z])", content)
        if letter:
            return letter.group(1)
        return choice_named_in(content, choices) if choices else None
    if task.kind == "yesno":
        match = re.search(r"\b(yes|no|true|false)\b", content, re.IGNORECASE)
        return YES_NO_ALIASES[match.group(1).lower()] if match else None
    return normalize_text(content, task)


def normalize_answer(answer, task):
    """A gold answer in the form `extract_answer` returns, or None when it is not one."""
    task = resolve_task(task)
    text = str(answer).strip()
    if task.kind == "numeric":
        return whole_number(latex_to_text(text).strip("$ "))
    if task.kind == "choice":
        match = re.fullmatch(rf"\(?([{task.choices}])[.)]?", text, re.IGNORECASE)
        return match.group(1).upper() if match else None
    if task.kind == "yesno":
        return YES_NO_ALIASES.get(text.lower().rstrip("."))
    return normalize_text(text, task)


def answers_match(pred, gold, task):
    """Whether two normalised answers agree: numerically for numeric tasks (to 1e-6 relative),
    exactly otherwise."""
    if pred is None or gold is None:
        return False
    if task_kind(task) != "numeric":
        return pred == gold
    try:
        a, b = Fraction(pred), Fraction(gold)
    except (ValueError, ZeroDivisionError):
        return pred == gold
    return abs(a - b) <= Fraction(1, 10**6) * max(1, abs(b))


def normalize_text(text, task):
    """A string or regex task's answer under its rules (see tasks.py); None when empty."""
    text = text.strip(ANSWER_EDGES)
    for unit in task.units:
        text = unit_pattern(unit).sub("", text).strip(ANSWER_EDGES)
    if "lowercase" in task.normalize:
        text = text.lower()
    if "strip_punctuation" in task.normalize:
        text = PUNCTUATION.sub("", text)
    if "strip_articles" in task.normalize:
        text = ARTICLES.sub(" ", text)
    text = " ".join(text.split())
    return text or None


@functools.lru_cache(maxsize=256)
def unit_pattern(unit):
    """A unit at the start or the end of an answer, not glued to a letter ("12cm" and "12 cm"
    lose "cm", "Acme" keeps its "me")."""
    unit = re.escape(unit)
    return re.compile(rf"^{unit}(?![^\W\d_])|(?<![^\W\d_]){unit}$", re.IGNORECASE)


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


def extract_string(text, task):
    """The text after the last "answer is" / "Answer:" to the end of its line, normalised."""
    cues = list(STRING_CUE.finditer(text))
    if not cues:
        return None
    start = cues[-1].end()
    end = text.find("\n", start)
    return normalize_text(text[start:end if end >= 0 else len(text)], task)


@functools.lru_cache(maxsize=64)
def choice_patterns(letters):
    """The regexes of a choice task with these letters: after a cue, in parentheses, alone on
    a line, and the two ways a question lists its choices."""
    letter = f"[{letters}]"
    return {
        "after cue": re.compile(rf"(?i:(?:answer|option|choice)\s*(?:is\b|:))\s*:?\s*\(?({letter})\b"),
        "in parentheses": re.compile(rf"\(({letter})\)"),
        "alone": re.compile(rf"\s*\(?({letter})[.)]?\s*"),
        # "Answer Choices:\nA. bank\nB. library" or "(A) bank (B) library" inside the question.
        "line": re.compile(rf"^\s*\(?({letter})[.)]\s*(.+?)\s*$", re.MULTILINE),
        "inline": re.compile(rf"\(({letter})\)\s*(.+?)\s*(?=\({letter}\)|$)", re.DOTALL),
    }


def parse_choices(question, letters="ABCDE"):
    """The answer choices listed in a question, {letter: text}; {} when it lists none."""
    patterns = choice_patterns(letters)
    _, marker, listed = question.partition("Answer Choices:")
    text = listed if marker else question
    choices = {letter: choice for letter, choice in patterns["line"].findall(text)}
    if len(choices) < 2:
        choices = {letter: choice.strip() for letter, choice in patterns["inline"].findall(text)}
    return choices if len(choices) >= 2 else {}


def extract_choice(text, choices, letters="ABCDE"):
    """The letter of `letters` that `text` settles on, or None; `choices` maps letters to texts."""
    patterns = choice_patterns(letters)
    after_cue = list(patterns["after cue"].finditer(text))
    if after_cue:
        return after_cue[-1].group(1)
    alone = patterns["alone"].fullmatch(last_line(text))
    if alone:
        return alone.group(1)
    in_parentheses = list(patterns["in parentheses"].finditer(text))
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
    """"yes" or "no": the first after the last cue, else a last line that is only that, else
    the one the text opens with; or None."""
    sentence = cue_sentence(text)
    if sentence is not None:
        match = YES_NO.search(sentence)
        if match:
            return match.group(1).lower()
    for candidate in (BARE_YES_NO.fullmatch(last_line(text)), YES_NO.match(text.lstrip())):
        if candidate:
            return candidate.group(1).lower()
    return None


def last_line(text):
    """The last line of `text` that is not blank ("" for none)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
