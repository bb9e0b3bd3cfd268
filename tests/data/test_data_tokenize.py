"""Tokenisation: a common answer span under every rationale, the template, the length budget."""
from mcckd.data import PromptFormat, Record, encode_prompt, tokenize_record, tokenize_records


def test_answer_ids_are_the_same_under_every_rationale(tokenizer, records):
    for record in records:
        question, too_long = tokenize_record(record, tokenizer)
        assert too_long == 0 and len(question.rationales) == len(record.rationales)
        assert tokenizer.decode(question.answer_ids).strip() == record.answer
        for rationale in question.rationales:
            span = rationale.input_ids[
                rationale.answer_start : rationale.answer_start + len(question.answer_ids)
            ]
            assert span == question.answer_ids


def test_sequence_text_follows_the_template(tokenizer, records):
    record = records[0]
    question, _ = tokenize_record(record, tokenizer)
    rationale = question.rationales[1]
    ids = rationale.input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    prompt = tokenizer.decode(ids[1:rationale.target_start])
    target = tokenizer.decode(ids[rationale.target_start:-1])
    assert prompt == f"Question: {record.question}\nAnswer:"
    assert target == f" {record.rationales[1]}\nTherefore, the answer is {record.answer}."


def test_template_is_configurable(tokenizer, records):
    prompt_format = PromptFormat(prompt="Q: {question}\nA:", answer_sentence="The answer is")
    question, _ = tokenize_record(records[1], tokenizer, prompt_format=prompt_format)
    ids = question.rationales[0].input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert (
        tokenizer.decode(ids[1:-1])
        == f"Q: {records[1].question}\nA: {records[1].rationales[0]}\nThe answer is 14."
    )
    assert question.rationales[0].target_start == len(encode_prompt(tokenizer, records[1].question,
                                                                     prompt_format=prompt_format))


def test_too_long_rationales_are_dropped_whole_and_counted(tokenizer, records):
    record = records[0]
    full, _ = tokenize_record(record, tokenizer)
    lengths = [len(rationale.input_ids) for rationale in full.rationales]
    budget = sorted(lengths)[1]  # room for the two shortest only
    question, too_long = tokenize_record(record, tokenizer, max_length=budget)
    assert too_long == sum(length > budget for length in lengths) == 1
    kept = [rationale.input_ids for rationale in question.rationales]
    assert kept == [
        rationale.input_ids for rationale in full.rationales if len(rationale.input_ids) <= budget
    ]


def test_tokenize_records_drops_questions_left_without_rationales(tokenizer, records):
    lengths = [
        [len(r.input_ids) for r in tokenize_record(record, tokenizer)[0].rationales] for record in records
    ]
    budget = min(min(question) for question in lengths)  # the shortest sequence of all fits
    empty = Record("q9", "svamp", "What is 2 + 2?", "4", [])
    questions, dropped = tokenize_records([*records, empty], tokenizer, max_length=budget)
    expected = [record.id for record, question in zip(records, lengths) if min(question) <= budget]
    assert 0 < len(expected) < len(records)
    assert [question.id for question in questions] == expected
    assert dropped == {
        "question without rationales": len(records) + 1 - len(expected),
        "rationale too long": sum(length > budget for question in lengths for length in question),
    }


def test_white_space_around_a_rationale_is_dropped(tokenizer, records):
    record = records[1]
    padded = Record(
        record.id, record.task, record.question, record.answer, [f"\n  {record.rationales[0]} \n\n"]
    )
    assert tokenize_record(padded, tokenizer)[0] == tokenize_record(record, tokenizer)[0]


def test_prompt_ids_start_every_sequence(tokenizer, records):
    record = records[0]
    question, _ = tokenize_record(record, tokenizer)
    prompt = encode_prompt(tokenizer, record.question)
    assert prompt[0] == tokenizer.bos_token_id
    assert tokenizer.decode(prompt[1:]) == f"Question: {record.question}\nAnswer:"
    assert all(r.input_ids[:r.target_start] == prompt for r in question.rationales)


def test_records_encoded_in_batches_give_the_sequences_of_one_at_a_time(tokenizer, records):
    empty = Record("q9", "svamp", "What is 2 + 2?", "4", [])
    many = [*records, empty, *records[::-1]]
    budget = sorted(len(r.input_ids) for r in tokenize_record(records[0], tokenizer)[0].rationales)[1]
    alone = [tokenize_record(record, tokenizer, max_length=budget) for record in many]
    expected = [question for question, _ in alone if question.rationales]
    for batch_size in (1, 2, len(many)):
        questions, dropped = tokenize_records(many, tokenizer, max_length=budget, batch_size=batch_size)
        assert questions == expected
        assert dropped["rationale too long"] == sum(too_long for _, too_long in alone) > 0
        assert dropped["question without rationales"] == len(many) - len(expected)
