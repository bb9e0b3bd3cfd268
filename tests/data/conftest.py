"""Shared fixtures of the data tests: a small tokenizer and tokenised questions."""
import pytest

from mcckd.data import Record
from mcckd.models.word_tokenizer import train_word_tokenizer

RECORDS = [
    Record("q0", "svamp", "Tom has 12 apples and gets 20 more. How many apples?", "32", [
        "12 + 20 = 32 apples.",
        "He starts with 12 and adds 20, so he has 32 apples in all.",
        "Twenty more than twelve is 32.",
    ]),
    Record("q1", "svamp", "A book costs $3.50. How much do 4 books cost?", "14", [
        "4 x 3.50 = 14 dollars.",
    ]),
    Record("q2", "csqa", "Where is money kept? Answer Choices:\nA. bank\nB. tree", "A", [
        "Money is kept in a bank.",
        "A bank keeps money safe for its customers.",
    ]),
    Record("q3", "svamp", "What is 1,000 + 234?", "1234", [
        "1,000 + 234 = 1,234.",
        "Add them: one thousand two hundred thirty-four, 1234.",
        "The sum is 1234.",
    ]),
]


@pytest.fixture(scope="session")
def tokenizer():
    texts = [text for record in RECORDS for text in (record.question, *record.rationales)]
    return train_word_tokenizer(texts + ["Question: Answer: Therefore, the answer is"], vocab_size=300)


@pytest.fixture(scope="session")
def records():
    return RECORDS
