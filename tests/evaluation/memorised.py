"""The evaluation tests' student: a tiny Llama that memorised what to answer to five questions
(three right, one wrong, one without an answer), and how its test file is written. Imported by
the tests of this folder as `memorised` (pytest puts the folder on the path)."""
import json
from dataclasses import replace

from helpers import memorise, tiny_llama

from mcckd.data import Record, tokenize_record
from mcckd.data.prompts import encode
from mcckd.models.word_tokenizer import train_word_tokenizer

# (question, gold answer, what the student learns to say): three right, one wrong, one with no
# answer at all.
CASES = [
    ("What is 3 plus 4?", "7", "3 plus 4 is 7.", "7"),
    ("What is 10 minus 2?", "8", "10 minus 2 is 8.", "8"),
    ("How many legs has a cat?", "4", "A cat has four legs.", "4"),
    ("What is 6 times 7?", "42", "6 times 7 is 40.", "40"),
    ("How tall is the tree?", "5", None, None),
]
UNANSWERED = " I do not know."
EXPECTED_EXTRACTED = ["7", "8", "4", "40", None]
EXPECTED_CORRECT = [True, True, True, False, False]


def training_sequence(record, taught_rationale, taught_answer, tokenizer):
    """(token ids, first target position) the student memorises for one question, built by the
    data package."""
    if taught_rationale is None:
        tokenized = tokenize_record(replace(record, rationales=["-"]), tokenizer)[0].rationales[0]
        prompt = tokenized.input_ids[:tokenized.target_start]
        return prompt + encode(tokenizer, UNANSWERED) + [tokenizer.eos_token_id], len(prompt)
    taught = replace(record, answer=taught_answer, rationales=[taught_rationale])
    tokenized = tokenize_record(taught, tokenizer)[0].rationales[0]
    return tokenized.input_ids, tokenized.target_start


def memorised_student():
    """(model, tokenizer, records, expected generations) of a student that learnt CASES."""
    records = [
        Record(f"svamp-{i}", "svamp", question, gold, []) for i, (question, gold, _, _) in enumerate(CASES)
    ]
    texts = [
        f"Question: {q}\nAnswer: {r or UNANSWERED}\nTherefore, the answer is {a}." for q, _, r, a in CASES
    ]
    tokenizer = train_word_tokenizer(texts, vocab_size=320)
    model = tiny_llama(tokenizer)
    sequences = [training_sequence(record, rationale, answer, tokenizer)
                 for record, (_, _, rationale, answer) in zip(records, CASES)]
    assert memorise(model, sequences, tokenizer.pad_token_id) < 0.01
    expected = [f" {rationale}\nTherefore, the answer is {answer}." if rationale else UNANSWERED
                for _, _, rationale, answer in CASES]
    return model.eval(), tokenizer, records, expected


def write_paper_layout(path, records):
    """The records as the paper's test files hold them: instruction, empty output, label."""
    rows = [
        {"instruction": record.question + "\n", "output": "", "label": record.answer} for record in records
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
