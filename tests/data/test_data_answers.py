"""Answer extraction and comparison, on written-out cases for every task."""
import pytest

from mcckd.data import TASKS, Task, answers_match, extract_answer, normalize_answer

NUMERIC_CASES = [
    # (rationale, expected answer)
    ("He has 12 + 20 = 32 apples. The answer is 32.", "32"),
    ("Therefore, the answer is 18 .", "18"),
    ("The answer is $1,200.", "1200"),
    ("She pays 3 x $6 = $18 in all.", "18"),
    ("Each costs 7 / 2 = 3.50 dollars.", "3.5"),
    ("The temperature fell from 6 to -4.", "-4"),
    ("So the change is 2 - 6 = -4 degrees.", "-4"),
    ("She ate 3/4 of the pie.", "0.75"),
    ("Each gets 1/3 of the cake.", "1/3"),
    ("The total is 36.0 liters.", "36"),
    ("They walked 2,500,000 steps in a year.", "2500000"),
    # the number after the cue, not the last number of the text
    ("Therefore, Melissa played 3 games to score 21 points.", "3"),
    ("Therefore, Emily had 44 x 2 = 88 beads for her 44 friends.", "88"),
    ("So Paco had 75 cookies left after eating 2 and buying 37.", "75"),
    ("Therefore, the total is 5 + 9 = 14 pieces.\nHe gave away 3 of them.", "14"),
    # no cue: the last number
    ("Bobby ate 33 + 4 = 37 pieces.\nAltogether 37 + 14 = 51", "51"),
    ("He counted 102 - 35 = 67 wrappers", "67"),
    # a cue whose sentence has no number: the last number of the text
    ("Therefore, we add them.\n37 + 14 = 51", "51"),
    # number words as the final answer
    ("21 / 7 = 3, so Melissa played three games.\nSo Melissa played three games in total.", "3"),
    ("Therefore, the answer is twenty-one.", "21"),
    ("So there are three hundred and five pages.", "305"),
    ("So 21 / 7 = three.", "3"),  # words after the "=" beat digits before it
    ("I cannot tell from this.", None),
    ("", None),
]

CSQA_QUESTION = (
    "A revolving door is convenient for two direction travel, but it also serves as a security "
    "measure at a what? Answer Choices:\nA. bank\nB. library\nC. department store\nD. mall\nE. new york"
)
CSQA_INLINE_QUESTION = "Where do you keep milk? (A) fridge (B) shelf (C) oven (D) car (E) store"

CHOICE_CASES = [
    # (rationale, question, expected letter)
    ("Banks need security. So the answer is A.", CSQA_QUESTION, "A"),
    ("The answer is (C).", CSQA_QUESTION, "C"),
    ("the answer is: e", CSQA_QUESTION, None),  # a lower-case letter is not a choice
    ("Libraries are quiet, so (B) is wrong; (A) fits.", CSQA_QUESTION, "A"),
    ("Therefore, the answer is a bank.", CSQA_QUESTION, "A"),
    ("Therefore, a department store.", CSQA_QUESTION, "C"),  # longer of two overlapping choices
    ("So it is the fridge, not the shelf.", CSQA_INLINE_QUESTION, "A"),
    ("Therefore, the answer is a bank.", None, None),  # no choices to match against
    ("I do not know.", CSQA_QUESTION, None),
]

YES_NO_CASES = [
    ("Aristotle died long before laptops. So the answer is no.", "no"),
    ("Therefore, yes, a pear sinks in water.", "yes"),
    ("Yes. Hydrogen is the lightest element.", "yes"),
    ("No, the Nile is longer.", "no"),
    ("Thus the answer is YES.", "yes"),
    ("It depends on the season.", None),
]


@pytest.mark.parametrize("task", ["gsm8k", "svamp", "asdiv"])
@pytest.mark.parametrize("text, expected", NUMERIC_CASES)
def test_numeric_extraction(text, expected, task):
    assert extract_answer(text, task) == expected


@pytest.mark.parametrize("text, question, expected", CHOICE_CASES)
def test_choice_extraction(text, question, expected):
    assert extract_answer(text, "csqa", question=question) == expected


@pytest.mark.parametrize("text, expected", YES_NO_CASES)
def test_yes_no_extraction(text, expected):
    assert extract_answer(text, "strategyqa") == expected


@pytest.mark.parametrize("task, raw, expected", [
    ("svamp", "1,200", "1200"), ("svamp", "$18", "18"), ("gsm8k", "18.0", "18"), ("asdiv", "-4", "-4"),
    ("svamp", "18 .", "18"), ("gsm8k", 7, "7"), ("gsm8k", 2.5, "2.5"), ("gsm8k", "seven", None),
    ("csqa", "c", "C"), ("csqa", "(B)", "B"), ("csqa", "F", None),
    ("strategyqa", "Yes", "yes"), ("strategyqa", True, "yes"), ("strategyqa", "false", "no"),
    ("strategyqa", "maybe", None),
])
def test_normalize_gold_answer(task, raw, expected):
    assert normalize_answer(raw, task) == expected


@pytest.mark.parametrize("pred, gold, task, expected", [
    ("18", "18", "svamp", True),
    ("0.75", "3/4", "svamp", True),
    ("1/3", "0.333333333", "gsm8k", True),
    ("0.33", "1/3", "gsm8k", False),
    ("1200", "1201", "asdiv", False),
    (None, "3", "svamp", False),
    ("C", "C", "csqa", True),
    ("C", "D", "csqa", False),
    ("yes", "no", "strategyqa", False),
])
def test_answers_match(pred, gold, task, expected):
    assert answers_match(pred, gold, task) is expected


def test_unknown_task_is_rejected():
    assert set(TASKS) == {"gsm8k", "svamp", "asdiv", "csqa", "strategyqa"}
    with pytest.raises(ValueError, match="unknown task 'math'"):
        extract_answer("The answer is 3.", "math")


# Reasoning teachers: think blocks, \boxed{}, ####, markdown; (text, task, expected).
REASONING_CASES = [
    (r"So $x = \boxed{\frac{3}{4}}$.", "gsm8k", "0.75"),
    (r"\boxed{\dfrac{10}{4}}", "gsm8k", "2.5"),
    (r"\boxed{-\tfrac{1}{3}}", "gsm8k", "-1/3"),
    (r"\boxed{x = 12}", "gsm8k", "12"),
    (r"\boxed{\$1{,}250.00}", "gsm8k", "1250"),
    (r"\boxed{12\,\text{cm}^2}", "gsm8k", "12"),
    (r"\boxed{1\,000\,000}", "gsm8k", "1000000"),
    (r"The answer is $\frac{5}{2}$ hours.", "gsm8k", "2.5"),  # LaTeX in a cue sentence
    (r"3 + 4 = \boxed{7}, then 7 + 1 = 8.", "gsm8k", "7"),  # a box decides even if not last
    ("So 5 + 5 = 10.\n#### 10", "gsm8k", "10"),
    ("#### 12\nThe answer is 12.\n\\boxed{13}", "gsm8k", "13"),  # the later statement counts
    ("\\boxed{12}\n#### 13", "gsm8k", "13"),
    ("<think>The answer is 5.</think>\nSo the answer is 6.", "gsm8k", "6"),
    ("<think>The answer is 5.</think>", "gsm8k", "5"),  # nothing after the block: inside it
    ("<think>The answer is 5.</think>\nDone.", "gsm8k", "5"),
    ("<think>So far 5 and still", "gsm8k", None),  # cut off inside the block
    ("The answer is **42**.", "gsm8k", "42"),
    ("**Answer:** 42 apples", "gsm8k", "42"),
    ("**Answer: (B)**", "csqa", "B"),
    ("The correct option is (D).", "csqa", "D"),
    ("The correct choice is E because ...", "csqa", "E"),
    ("Option (A) is wrong.\n\n**C**", "csqa", "C"),
    ("<think>(A) maybe</think>\n\\boxed{\\text{B}}", "csqa", "B"),
    ("\\boxed{F}", "csqa", None),  # F is no csqa choice
    ("**No**", "strategyqa", "no"),
    ("Fish need water.\n\n**Yes.**", "strategyqa", "yes"),
    ("\\boxed{\\text{No}}", "strategyqa", "no"),
    ("\\boxed{True}", "strategyqa", "yes"),
    ("**Answer:** No, it cannot.", "strategyqa", "no"),
    ("<think>yes</think>\n\\boxed{B}", "strategyqa", None),  # the boxed answer is not yes or no
]


@pytest.mark.parametrize("text, task, expected", REASONING_CASES)
def test_reasoning_teacher_extraction(text, task, expected):
    assert extract_answer(text, task) == expected


TEN_CHOICES = Task("mmlu-pro", "choice", choices="ABCDEFGHIJ")
CITY = Task("city", "string", normalize=("lowercase", "strip_articles", "strip_punctuation"))
LENGTH = Task("length", "string", normalize=("lowercase",), units=("cm", "centimeters"))
CODE = Task("code", "regex", pattern=r"CODE-(?P<answer>\d+)")


@pytest.mark.parametrize("text, task, expected", [
    ("The answer is (H).", TEN_CHOICES, "H"),
    ("\\boxed{J}", TEN_CHOICES, "J"),
    ("Therefore, the answer is J.", TEN_CHOICES, "J"),
    ("The answer is (K).", TEN_CHOICES, None),
    ("Therefore, the answer is The Hague.", CITY, "hague"),
    ("**Answer:** \"the HAGUE\"!", CITY, "hague"),
    ("\\boxed{\\text{The Hague}}", CITY, "hague"),
    ("The Hague, I think.", CITY, None),  # no cue
    ("The answer is 12 cm.", LENGTH, "12"),
    ("The answer is 12cm", LENGTH, "12"),
    ("The answer is Acme", LENGTH, "acme"),  # "me" is no unit, "cm" is not glued to a letter here
    ("Tried CODE-1, then CODE-77.", CODE, "77"),
    ("<think>CODE-5</think>CODE-6", CODE, "6"),
    ("no code", CODE, None),
])
def test_tasks_of_ones_own_read_by_their_rules(text, task, expected):
    assert extract_answer(text, task) == expected


@pytest.mark.parametrize("raw, task, expected", [
    (r"\frac{3}{4}", "gsm8k", "0.75"), (r"$\dfrac{1}{3}$", "gsm8k", "1/3"), ("1{,}200", "gsm8k", "1200"),
    ("h", TEN_CHOICES, "H"), ("(J)", TEN_CHOICES, "J"), ("K", TEN_CHOICES, None),
    ("The Hague.", CITY, "hague"), ("  the   hague ", CITY, "hague"), ("...", CITY, None),
    ("12 centimeters", LENGTH, "12"),
    ("7", CODE, "7"), ("code-7", CODE, "code-7"),  # the pattern reads outputs, not gold answers
])
def test_normalize_gold_answers_of_every_kind(raw, task, expected):
    assert normalize_answer(raw, task) == expected


def test_string_answers_match_exactly_after_normalisation():
    said = extract_answer("The answer is THE HAGUE.", CITY)
    assert answers_match(said, normalize_answer("Hague", CITY), CITY)
    assert not answers_match("hague", "the hague", CITY)  # answers_match compares normalised forms
    assert not answers_match("12", "12.0", LENGTH)  # not numeric: exact
