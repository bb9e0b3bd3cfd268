"""The demo's task and teacher: problems add up, frames differ, rationales take different routes
to the right answer, and the wrong ones are wrong."""
import random
import re
from dataclasses import replace

import pytest

from mcckd.data import extract_answer, prepare_records
from mcckd.data.prompts import PLAIN, bind_format
from mcckd.data.tokenize import tokenize_with
from mcckd.demo.runner import students_tokenizer
from mcckd.demo.task import (
    FRAMES,
    ID_FRAMES,
    OOD_FRAMES,
    STRATEGIES,
    TASK,
    Arithmetic,
    make_problems,
    teacher_rationales,
    to_record,
)


def numbers(text):
    return sorted(int(n) for n in re.findall(r"\d+", text))


def equations(text):
    return re.findall(r"\d+ [-+x] \d+ = \d+", text)


@pytest.fixture(scope="module")
def problems():
    return make_problems(random.Random(0), 300, FRAMES)


def test_problems_add_up_and_their_questions_state_every_number(problems):
    for p in problems:
        kinds = [event.kind for event in p.events]
        assert len(p.events) + kinds.count("boxes") in (2, 3)  # arithmetic steps, taken in order
        assert "loss" in kinds and set(kinds) - {"loss"}
        lost = sum(event.count for event in p.events if event.kind == "loss")
        assert p.start >= lost  # any order of the events stays at or above zero
        assert p.answer == p.start + sum(
            e.count * e.size if e.kind == "boxes" else e.count * (-1 if e.kind == "loss" else 1)
            for e in p.events
        )
        given = [p.start] + [
            n for e in p.events for n in ((e.count, e.size) if e.kind == "boxes" else (e.count,))
        ]
        assert numbers(p.question) == sorted(given)
    assert len({p.question for p in problems}) == len(problems)
    assert {p.frame for p in problems} == set(FRAMES)


def test_each_frame_phrases_a_problem_its_own_way(problems):
    texts = {frame: replace(problems[0], frame=frame).question for frame in FRAMES}
    assert len(set(texts.values())) == len(FRAMES)
    assert not set(ID_FRAMES) & set(OOD_FRAMES)
    rng = random.Random(1)
    train = make_problems(rng, 200, ID_FRAMES)
    test = make_problems(rng, 50, ID_FRAMES, exclude={p.question for p in train})
    assert {p.frame for p in test} <= set(ID_FRAMES)
    assert not {p.question for p in train} & {p.question for p in test}


def test_every_strategy_reaches_the_answer_by_its_own_steps(problems):
    rng = random.Random(2)
    distinct = []
    for p in problems:
        routes = set()
        for strategy in STRATEGIES:
            value, text = strategy(p, Arithmetic(), rng)
            assert value == p.answer
            assert extract_answer(text, TASK) == str(p.answer), text
            routes.add(frozenset(equations(text)))
        distinct.append(len(routes))
    # Routes coincide only by chance (6 - 3 = 3 and 3 + 3 = 6), or when the totals route is the
    # walk in order (a gain, then a loss).
    assert sum(n >= 3 for n in distinct) > 0.9 * len(problems)
    assert sum(n == 4 for n in distinct) > 0.3 * len(problems)


def test_the_teacher_samples_distinct_rationales_and_some_wrong_ones(problems):
    rng = random.Random(3)
    wrong = total = 0
    for p in problems:
        texts = teacher_rationales(p, rng, n=8, wrong_rate=0.15)
        answers = [extract_answer(text, TASK) for text in texts]
        wrong += sum(answer != str(p.answer) for answer in answers)
        total += len(texts)
        assert len(set(texts)) >= 2
    assert 0.10 < wrong / total < 0.20  # 2400 samples at a rate of 0.15
    assert all(extract_answer(text, TASK) == str(p.answer)
               for p in problems[:50] for text in teacher_rationales(p, rng, wrong_rate=0.0))


def test_prepare_keeps_diverse_correct_rationales(problems):
    rng = random.Random(4)
    records = [to_record(p, f"q{i}", teacher_rationales(p, rng)) for i, p in enumerate(problems)]
    kept, report = prepare_records(records, 4, min_rationales=2)
    assert report.rationales_dropped["wrong answer"] > 0 and report.rationales_dropped["exact duplicate"] > 0
    assert report.kept_with_at_least(4) > 0.9 * len(problems)
    routes = [len({frozenset(equations(text)) for text in record.rationales}) for record in kept]
    assert sum(n >= 3 for n in routes) > 0.75 * len(kept)
    for record in kept:
        assert 2 <= len(record.rationales) <= 4
        assert all(extract_answer(text, TASK) == record.answer for text in record.rationales)
        assert not any("answer is" in text for text in record.rationales)  # the closing sentence is stripped


def test_held_out_questions_read_only_tokens_that_training_reads():
    """Every token of a held-out question's prompt occurs in the training sequences (prompt and
    rationale, the students' tokenizer fitted to the training text), so no held-out answer hangs on
    an embedding that training never updates; the held-out questions still differ from them."""
    rng = random.Random(3)
    train = make_problems(rng, 400, ID_FRAMES)
    held_out = make_problems(rng, 200, OOD_FRAMES)
    records = [to_record(p, f"train-{i}", teacher_rationales(p, rng)) for i, p in enumerate(train)]
    tokenizer = students_tokenizer(records)
    prompts = bind_format(tokenizer, PLAIN)
    trained = {token for record in records for rationale in tokenize_with(record, prompts)[0].rationales
               for token in rationale.input_ids}
    for p in held_out:
        unread = set(prompts.prompt_ids(p.question)) - trained
        assert not unread, (p.question, tokenizer.convert_ids_to_tokens(sorted(unread)))
    assert {p.frame for p in held_out} == set(OOD_FRAMES)
    assert not {p.question for p in held_out} & {p.question for p in train}
