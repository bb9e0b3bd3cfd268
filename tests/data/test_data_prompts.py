"""Prompt formats: chat templates of three public styles keep the common answer span exact, put
the template's own prompt before every target and end it with the template's end of turn."""
import pytest
from helpers import CHAT_TEMPLATES, chat_tokenizer

from mcckd.data import PromptFormat, bind_format, encode_prompt, pack_questions, tokenize_record
from mcckd.data.stream import MicroBatches
from mcckd.errors import InputError
from mcckd.training.config import load_config

STYLES = list(CHAT_TEMPLATES)
CHAT = PromptFormat("chat")
SYSTEM = PromptFormat("chat", system="You solve arithmetic word problems.")


@pytest.fixture(scope="module", params=STYLES)
def styled(request, records):
    """(style, tokenizer with that style's chat template)."""
    texts = [text for record in records for text in (record.question, *record.rationales)]
    return request.param, chat_tokenizer(request.param, [*texts, "Therefore, the answer is"])


def template_prompt(tokenizer, question, system=None):
    """The oracle: the template's own tokenisation of the prompt, straight from transformers."""
    messages = ([] if system is None else [{"role": "system", "content": system}])
    messages.append({"role": "user", "content": question})
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def test_answer_span_is_identical_across_rationales(styled, records):
    _, tokenizer = styled
    for record in records:
        question, _ = tokenize_record(record, tokenizer, prompt_format=CHAT)
        assert len(question.rationales) == len(record.rationales)
        assert tokenizer.decode(question.answer_ids) == f" {record.answer}"
        spans = {tuple(r.input_ids[r.answer_start:r.answer_start + len(question.answer_ids)])
                 for r in question.rationales}
        assert spans == {tuple(question.answer_ids)}


def test_consistency_rows_point_at_the_answer_tokens(styled, records):
    _, tokenizer = styled
    questions = [tokenize_record(record, tokenizer, prompt_format=CHAT)[0] for record in records]
    batch = pack_questions(questions, k=3)
    group = 0
    for question in questions:
        rows = batch.answer_index[group:group + len(question.answer_ids)]
        group += len(question.answer_ids)
        for k in range(len(question.rationales)):
            assert batch.labels[rows[:, k]].tolist() == question.answer_ids
            assert batch.input_ids[rows[:, k] + 1].tolist() == question.answer_ids


def test_training_prompt_is_the_templates_generation_prompt(styled, records):
    _, tokenizer = styled
    for record in records:
        question, _ = tokenize_record(record, tokenizer, prompt_format=CHAT)
        expected = template_prompt(tokenizer, record.question)
        assert all(r.input_ids[:r.target_start] == expected for r in question.rationales)
        assert encode_prompt(tokenizer, record.question, prompt_format=CHAT) == expected


def test_whole_sequence_is_the_templates_conversation(styled, records):
    """prompt + target decode to the template's rendering of the conversation with the reply
    (and EOS where the end of turn has no special token to stop at)."""
    style, tokenizer = styled
    record = records[0]
    question, _ = tokenize_record(record, tokenizer, prompt_format=CHAT)
    for text, rationale in zip(record.rationales, question.rationales):
        reply = f"{text}\nTherefore, the answer is {record.answer}."
        messages = [{"role": "user", "content": record.question}, {"role": "assistant", "content": reply}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        assert tokenizer.decode(rationale.input_ids) == rendered
        assert rendered.endswith(reply + CHAT_TEMPLATES[style][2])


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_a_system_message_goes_into_the_prompt(style, records):
    tokenizer = chat_tokenizer(style, [records[0].question, "arithmetic word problems"])
    ids = encode_prompt(tokenizer, records[0].question, prompt_format=SYSTEM)
    assert ids == template_prompt(tokenizer, records[0].question, SYSTEM.system)
    assert ids != encode_prompt(tokenizer, records[0].question, prompt_format=CHAT)
    assert "You solve arithmetic word problems." in tokenizer.decode(ids)


def test_generation_stops_at_the_end_of_turn_token(styled):
    style, tokenizer = styled
    bound = bind_format(tokenizer, CHAT)
    end_of_turn = CHAT_TEMPLATES[style][2].strip()
    assert bound.stop_ids == [tokenizer.convert_tokens_to_ids(end_of_turn)]
    assert bound.closing[-1] != tokenizer.eos_token_id or end_of_turn == tokenizer.eos_token


def test_an_end_of_turn_without_a_special_token_is_followed_by_eos(records):
    tokenizer = chat_tokenizer("chatml", [records[0].question])
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    record = records[1]
    rationale = tokenize_record(record, tokenizer, prompt_format=CHAT)[0].rationales[0]
    prompt = rationale.input_ids[:rationale.target_start]
    assert tokenizer.decode(prompt) == f"user: {record.question}\nassistant:"
    assert rationale.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(rationale.input_ids[rationale.target_start:-1]) == (
        f" {record.rationales[0]}\nTherefore, the answer is {record.answer}.\n")
    assert bind_format(tokenizer, CHAT).stop_ids == []


def test_custom_plain_prompt_and_answer_sentence(records):
    tokenizer = chat_tokenizer("chatml", [records[0].question, "Problem Solution So the result is"])
    plain = PromptFormat(prompt="Problem: {question}\nSolution:", answer_sentence="So the result is")
    rationale = tokenize_record(records[1], tokenizer, prompt_format=plain)[0].rationales[0]
    assert tokenizer.decode(rationale.input_ids) == (
        f"<s>Problem: {records[1].question}\nSolution: {records[1].rationales[0]}\nSo the result is 14.</s>")


def test_the_chat_format_refuses_what_it_cannot_build(records):
    plain_tokenizer = chat_tokenizer("chatml", [records[0].question])
    plain_tokenizer.chat_template = None
    with pytest.raises(InputError, match="has none"):
        bind_format(plain_tokenizer, CHAT)
    mistral = chat_tokenizer("mistral", [records[0].question])
    with pytest.raises(InputError, match="cannot render a system/user conversation: Only user and assistant"):
        bind_format(mistral, SYSTEM)
    with pytest.raises(InputError, match="decoder-only student"):
        bind_format(chat_tokenizer("chatml", [records[0].question]), CHAT, encoder_decoder=True)


@pytest.mark.parametrize("fields, message", [
    ({"kind": "html"}, "kind must be one of"),
    ({"prompt": "Q: {q}"}, "must hold the placeholder {question}"),
    ({"system": "be brief"}, "needs the chat format"),
])
def test_prompt_format_checks_its_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        PromptFormat(**fields)


@pytest.mark.parametrize("override, key", [
    ("data.format=html", "data.format"),
    ("data.prompt=Q:", "data.prompt"),
    ("data.system=be brief", "data.system"),
])
def test_config_prompt_keys_are_checked(override, key):
    with pytest.raises(InputError, match=f"config key '{key}'"):
        load_config(None, ["data.train=x.jsonl", "model.name_or_path=m", override])


def test_the_run_config_format_reaches_the_training_sequences(records):
    tokenizer = chat_tokenizer("llama3", [text for record in records for text in record.rationales])
    config = load_config(None, ["data.train=x.jsonl", "model.name_or_path=m", "data.format=chat",
                                "data.system=Be exact.", "data.num_rationales=3", "data.max_length=256"])
    stream = MicroBatches(config, records, tokenizer)
    for question, record in zip(stream.questions, records):
        prompt = template_prompt(tokenizer, record.question, "Be exact.")
        assert all(r.input_ids[:r.target_start] == prompt for r in question.rationales)
    batch = stream.for_step(0)[0]
    assert (batch.input_ids == tokenizer.convert_tokens_to_ids("<|eot_id|>")).sum() > 0


def test_a_tokenizer_without_a_chat_template_fails_before_training(records):
    tokenizer = chat_tokenizer("chatml", [records[0].question])
    tokenizer.chat_template = None
    config = load_config(None, ["data.train=x.jsonl", "model.name_or_path=m", "data.format=chat"])
    with pytest.raises(InputError, match="chat template"):
        MicroBatches(config, records, tokenizer)


def test_plain_format_is_unchanged_by_a_chat_template(records):
    tokenizer = chat_tokenizer("chatml", [text for record in records for text in record.rationales])
    record = records[0]
    rationale = tokenize_record(record, tokenizer)[0].rationales[0]
    assert tokenizer.decode(rationale.input_ids) == (
        f"<s>Question: {record.question}\nAnswer: {record.rationales[0]}\nTherefore, the answer is "
        f"{record.answer}.</s>")
