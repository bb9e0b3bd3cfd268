"""mcckd generate against a loopback chat-completions server that fails on purpose."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mcckd.cli import main
from mcckd.data.resumable import finished_ids
from mcckd.errors import InputError
from mcckd.models.word_tokenizer import train_word_tokenizer
from mcckd.teacher.client import (
    ChatCompletionsClient,
    CompletionsClient,
    QuestionError,
    backoff_delay,
    endpoint_url,
    parse_retry_after,
)
from mcckd.teacher.generate import local_prompt_ids

SECRET = "sk-test-0123456789-do-not-leak"
KEY_ENV = "MCCKD_TEST_TEACHER_KEY"
ITEM = re.compile(r"Item (\d+):")
REPO = Path(__file__).resolve().parents[2]


def question(i):
    return f"Item {i}: Tom has {i} apples and gets {i} more. How many apples does he have?"


def write_questions(path, count):
    """`count` svamp questions in the canonical layout, ids svamp-0 ...; the answer of item i is 2i."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": f"svamp-{i}", "task": "svamp", "question": question(i),
                                     "answer": str(2 * i), "rationales": []}) + "\n")


class Teacher(ThreadingHTTPServer):
    """A chat-completions server on 127.0.0.1 that answers item i with 2i.

    failures[i] lists what the next requests for item i get before a success: an HTTP status,
    (status, Retry-After), "drop" (the connection closes without a response), "truncated" (a
    200 whose JSON body is cut short) or "empty" (a 200 with an empty `choices`). Items in
    `held` wait for `gate` before their successful answer; an error to an item of
    `gate_openers` waits until every held item has been asked, and opens the gate half a
    second after it is sent. At most `max_choices` choices per response. Every request is
    logged with the phase it arrived in.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), TeacherHandler)
        self.lock = threading.Lock()
        self.log = []  # dicts: item, phase, status, time, authorization, prompt
        self.failures = {}
        self.held = set()
        self.gate = threading.Event()
        self.gate_openers = set()
        self.phase = 1
        self.max_choices = None
        self.delay = 0.0
        self.in_flight = 0
        self.most_in_flight = 0
        self.served = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def statuses(self, item, phase=None):
        with self.lock:
            return [entry["status"] for entry in self.log
                    if entry["item"] == item and (phase is None or entry["phase"] == phase)]

    def items_asked(self, phase):
        with self.lock:
            return {entry["item"] for entry in self.log if entry["phase"] == phase}

    def wait_for_held(self, timeout=30.0):
        """Until every item of `held` has been asked in this phase (at most `timeout` s)."""
        deadline = time.monotonic() + timeout
        while not self.held <= self.items_asked(self.phase) and time.monotonic() < deadline:
            time.sleep(0.01)


class TeacherHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass  # keep the test output quiet

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        item = int(ITEM.search(prompt).group(1))
        with server.lock:
            planned = server.failures.get(item, [])
            action = planned.pop(0) if planned else 200
            server.log.append(
                {
                    "item": item,
                    "phase": server.phase,
                    "status": action,
                    "time": time.monotonic(),
                    "authorization": self.headers.get("Authorization"),
                    "prompt": prompt,
                }
            )
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        try:
            self.respond(server, item, action, body)
        except OSError:
            pass  # the client was killed while we waited
        finally:
            with server.lock:
                server.in_flight -= 1

    def respond(self, server, item, action, body):
        time.sleep(server.delay)
        if action == "drop":
            self.close_connection = True
            return
        if action == "truncated":
            self.send_json(200, {"id": "chatcmpl-test", "choices": [{"index": 0, "message": {}}]}, cut=20)
            return
        if action == "empty":
            self.send_json(200, {"id": "chatcmpl-test", "object": "chat.completion", "choices": []})
            return
        if action != 200:
            status, retry_after = action if isinstance(action, tuple) else (action, None)
            if item in server.gate_openers:  # the held items are in flight before the error
                server.wait_for_held()
            self.send_json(status, {"error": {"message": f"injected {status}"}}, retry_after)
            if item in server.gate_openers:  # once the client has surely read the error
                threading.Timer(0.5, server.gate.set).start()
            return
        if item in server.held:
            server.gate.wait(timeout=60)
        count = body["n"] if server.max_choices is None else min(body["n"], server.max_choices)
        with server.lock:
            first = server.served
            server.served += count
        choices = [{"index": k, "finish_reason": "stop", "message": {
            "role": "assistant",
            "content": f"Tom has {item} apples and gets {item} more (sample {first + k}).\n"
                       f"{item} + {item} = {2 * item}.\nTherefore, the answer is {2 * item}."}}
            for k in range(count)]
        self.send_json(200, {"id": "chatcmpl-test", "object": "chat.completion", "choices": choices})

    def send_json(self, status, payload, retry_after=None, cut=None):
        data = json.dumps(payload).encode()[:cut]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def teacher():
    server = Teacher()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.gate.set()
    server.shutdown()
    server.server_close()


def generate_argv(input_path, out, url, *extra):
    return ["generate", str(input_path), "--endpoint", url, "--model", "teacher", "--num-samples", "3",
            "--temperature", "0.7", "--task", "svamp", "--out", str(out), "--retry-delay", "0.01",
            "--api-key-env", KEY_ENV, *extra]


def read_lines(path):
    """The records of an output file; asserts that every line is complete JSON."""
    raw = Path(path).read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in raw.decode().splitlines()]


def wait_until(condition, process, what, deadline=90):
    """Poll `condition` until it holds; fail if the process ends first or time runs out."""
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        assert process.poll() is None, process.communicate()
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_killed_run_resumes_without_repeats_or_torn_lines(teacher, tmp_path, monkeypatch, capsys):
    items, finished_first = 12, 6
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, items)
    teacher.failures = {i: [500, (429, 0)] for i in range(items)}
    teacher.max_choices = 2  # three samples take two requests
    teacher.held = set(range(finished_first, items))  # still in flight when the client dies

    process = subprocess.Popen(
        [sys.executable, "-m", "mcckd", *generate_argv(source, out, teacher.url, "--concurrency", "3")],
        cwd=REPO, env={**os.environ, KEY_ENV: SECRET}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: out.exists() and out.read_bytes().count(b"\n") == finished_first, process,
                   f"{finished_first} lines")
        wait_until(lambda: teacher.items_asked(1) & teacher.held, process, "the held questions")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert SECRET.encode() not in stdout + stderr
    first_run = read_lines(out)
    assert sorted(record["id"] for record in first_run) == [f"svamp-{i}" for i in range(finished_first)]
    assert teacher.items_asked(1) > set(range(finished_first))  # held items were in flight
    # A crash in the middle of a write leaves half a line: the next run must cut it off.
    torn = json.dumps({"id": f"svamp-{finished_first}", "task": "svamp", "question": question(finished_first),
                       "answer": str(2 * finished_first), "rationales": ["half a rat"]})
    with open(out, "ab") as handle:
        handle.write(torn[:60].encode())

    teacher.phase = 2
    teacher.failures = {i: [500, (429, 0)] for i in range(items)}
    teacher.gate.set()
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert main(generate_argv(source, out, teacher.url, "--concurrency", "3")) == 0

    records = read_lines(out)
    assert Counter(record["id"] for record in records) == Counter(f"svamp-{i}" for i in range(items))
    assert teacher.items_asked(2) == set(range(finished_first, items))
    for i in range(finished_first, items):
        assert teacher.statuses(i, phase=2) == [500, (429, 0), 200, 200]
    for record in records:
        i = int(record["id"].split("-")[1])
        assert (
            record["question"] == question(i) and record["answer"] == str(2 * i) and record["task"] == "svamp"
        )
        assert len(record["rationales"]) == 3 == len(set(record["rationales"]))
        assert all(text.endswith(f"Therefore, the answer is {2 * i}.") for text in record["rationales"])
    assert {entry["authorization"] for entry in teacher.log} == {f"Bearer {SECRET}"}
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in out.read_text()


def test_rerun_of_a_finished_file_asks_nothing(teacher, tmp_path):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 3)
    assert main(generate_argv(source, out, teacher.url)) == 0
    before = out.read_bytes()
    asked = len(teacher.log)
    assert main(generate_argv(source, out, teacher.url)) == 0
    assert len(teacher.log) == asked == 3
    assert out.read_bytes() == before


def test_retry_after_is_honoured(teacher):
    teacher.failures = {0: [(429, 1)]}
    client = ChatCompletionsClient(teacher.url, "teacher", retry_delay=0.001)
    assert len(client.sample(question(0), n=2, temperature=1.0)) == 2
    first, second = (entry["time"] for entry in teacher.log)
    assert second - first >= 1.0


def test_dropped_connection_and_5xx_are_retried(teacher):
    teacher.failures = {0: ["drop", 502, 503, "drop"]}
    client = ChatCompletionsClient(teacher.url, "teacher", retry_delay=0.001)
    texts = client.sample(question(0), n=3, temperature=1.0)
    assert len(texts) == 3 and all(text.endswith("the answer is 0.") for text in texts)
    assert teacher.statuses(0) == ["drop", 502, 503, "drop", 200]


def test_other_4xx_stops_at_once_with_the_servers_message(teacher, tmp_path, monkeypatch, capsys):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 4)
    teacher.failures = {i: [401] for i in range(4)}
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert main(generate_argv(source, out, teacher.url, "--concurrency", "1")) == 2
    error = capsys.readouterr().err
    assert "mcckd: error:" in error and "HTTP 401" in error and "injected 401" in error
    assert SECRET not in error
    assert [entry["status"] for entry in teacher.log] == [401]
    assert read_lines(out) == []


def test_persistent_5xx_gives_up_after_the_retries(teacher, tmp_path, capsys):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 1)
    teacher.failures = {0: [503] * 10}
    assert main(generate_argv(source, out, teacher.url, "--max-retries", "2")) == 1
    assert "still failing after 3 attempts" in capsys.readouterr().err
    assert teacher.statuses(0) == [503, 503, 503]


def test_concurrency_is_bounded(teacher, tmp_path):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 8)
    teacher.delay = 0.1
    assert main(generate_argv(source, out, teacher.url, "--concurrency", "3")) == 0
    assert 2 <= teacher.most_in_flight <= 3
    assert len(read_lines(out)) == 8


def test_prompt_file_is_filled_in(teacher, tmp_path, capsys):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 1)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text('Solve {"strictly": true}: {question}\nEnd with the answer, {answer_kind}.')
    assert main(generate_argv(source, out, teacher.url, "--prompt", str(prompt))) == 0
    assert (
        teacher.log[0]["prompt"]
        == f'Solve {{"strictly": true}}: {question(0)}\nEnd with the answer, a number.'
    )
    prompt.write_text("no placeholder here")
    assert main(generate_argv(source, tmp_path / "other.jsonl", teacher.url, "--prompt", str(prompt))) == 2
    assert "{question}" in capsys.readouterr().err


def test_default_prompt_asks_for_the_answer_sentence(teacher, tmp_path):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 1)
    assert main(generate_argv(source, out, teacher.url)) == 0
    prompt = teacher.log[0]["prompt"]
    assert question(0) in prompt and '"Therefore, the answer is X."' in prompt and "a number" in prompt


def test_torn_last_line_is_cut_off(tmp_path):
    out = tmp_path / "rationales.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "ques')
    assert finished_ids(out) == {"a", "b"}
    assert out.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    assert finished_ids(tmp_path / "absent.jsonl") == set()


def test_broken_line_inside_the_file_is_an_error(tmp_path):
    out = tmp_path / "rationales.jsonl"
    out.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(InputError, match=r"rationales.jsonl:2:"):
        finished_ids(out)


def test_backoff_grows_with_jitter_and_respects_retry_after():
    for attempt in range(6):
        ceiling = min(8.0, 0.5 * 2 ** attempt)
        delays = [backoff_delay(attempt, 0.5, 8.0) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1
    assert backoff_delay(0, 0.5, 8.0, retry_after=5.0) == 5.0


def test_retry_after_header_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_ten = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=10), usegmt=True)
    assert 8 <= parse_retry_after(in_ten) <= 10
    assert parse_retry_after(format_datetime(datetime(2000, 1, 1, tzinfo=timezone.utc), usegmt=True)) == 0


def test_endpoint_forms():
    assert endpoint_url("http://h:8000/v1/", "/chat/completions") == "http://h:8000/v1/chat/completions"
    assert endpoint_url("https://h/v1/chat/completions", "/chat/completions") == "https://h/v1/chat/completions"
    assert endpoint_url("https://h/v1/chat/completions", "/completions") == "https://h/v1/completions"
    assert CompletionsClient("http://h/v1/completions", "m").url == "http://h/v1/completions"
    with pytest.raises(InputError, match="--endpoint"):
        endpoint_url("h:8000/v1", "/completions")


def test_a_reply_without_choices_is_retried_then_fails_the_question(teacher):
    client = ChatCompletionsClient(teacher.url, "teacher", retry_delay=0.001, max_retries=2)
    teacher.max_choices = 0
    with pytest.raises(QuestionError, match="malformed reply after 3 attempts: .*no choices"):
        client.sample(question(0), n=1, temperature=1.0)
    assert teacher.statuses(0) == [200, 200, 200]


def test_malformed_replies_are_retried_until_one_is_whole(teacher):
    teacher.failures = {0: ["truncated", "empty"]}
    client = ChatCompletionsClient(teacher.url, "teacher", retry_delay=0.001)
    assert client.sample(question(0), n=2, temperature=1.0)[0].endswith("the answer is 0.")
    assert teacher.statuses(0) == ["truncated", "empty", 200]


def test_local_model_writes_n_rationales_per_question(tmp_path):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 5)
    tokenizer = train_word_tokenizer([question(i) for i in range(5)], vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    argv = ["generate", str(source), "--local", str(tmp_path / "teacher"), "--num-samples", "3",
            "--temperature", "1.0", "--task", "svamp", "--out", str(out), "--max-tokens", "8",
            "--batch-size", "2", "--device", "cpu"]
    assert main(argv) == 0
    records = read_lines(out)
    assert sorted(record["id"] for record in records) == [f"svamp-{i}" for i in range(5)]
    for record in records:
        assert len(record["rationales"]) == 3
        assert all(isinstance(text, str) for text in record["rationales"])
    assert len({text for record in records for text in record["rationales"]}) > 5  # sampled, not greedy
    assert main(argv) == 0
    assert read_lines(out) == records


def test_local_prompt_uses_the_chat_template_when_there_is_one():
    tokenizer = train_word_tokenizer(["user assistant: what is it?"], vocab_size=300)
    assert tokenizer.decode(local_prompt_ids(tokenizer, "what is it?")) == "what is it?"
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    assert tokenizer.decode(local_prompt_ids(tokenizer, "what is it?")) == "user: what is it?\nassistant:"


def test_a_task_of_ones_own_names_its_answer_in_the_prompt(teacher, tmp_path, monkeypatch):
    task_file = tmp_path / "apples.yaml"
    task_file.write_text("name: apples\nkind: numeric\ndescription: the number of apples\n")
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    source.write_text("".join(json.dumps({"id": f"a-{i}", "task": "apples", "question": question(i),
                                          "answer": str(2 * i)}) + "\n" for i in range(2)))
    monkeypatch.setenv(KEY_ENV, SECRET)
    argv = generate_argv(source, out, teacher.url)
    argv[argv.index("--task"):argv.index("--task") + 2] = ["--task-file", str(task_file)]
    assert main(argv) == 0
    assert all("where X is the number of apples." in entry["prompt"] for entry in teacher.log)
    written = sorted((record["id"], record["task"], len(record["rationales"])) for record in read_lines(out))
    assert written == [("a-0", "apples", 3), ("a-1", "apples", 3)]


def failures_of(out):
    return read_lines(out.with_name(out.stem + ".failures.jsonl"))


@pytest.mark.parametrize("fault", [400, "truncated", "empty"])
def test_a_question_that_always_fails_does_not_block_the_others(teacher, tmp_path, capsys, fault):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 30)
    teacher.failures = {7: [fault] * 10}
    argv = generate_argv(source, out, teacher.url, "--max-retries", "2")
    assert main(argv) == 0
    written = sorted(record["id"] for record in read_lines(out))
    assert written == sorted(f"svamp-{i}" for i in range(30) if i != 7)
    (failure,) = failures_of(out)
    assert failure["id"] == "svamp-7"
    assert ("HTTP 400" in failure["reason"] and "injected 400" in failure["reason"]) if fault == 400 \
        else "malformed reply after 3 attempts" in failure["reason"]
    assert teacher.statuses(7) == [fault] * (1 if fault == 400 else 3)
    assert "29 of 30 questions in" in capsys.readouterr().err.splitlines()[-1]

    teacher.phase = 2
    assert main(argv) == 0  # a rerun skips it
    assert teacher.items_asked(2) == set()
    assert "1 failed before (--retry-failed asks them again)" in capsys.readouterr().err
    teacher.phase, teacher.failures = 3, {}
    assert main([*argv, "--retry-failed"]) == 0
    assert teacher.items_asked(3) == {7}
    assert sorted(record["id"] for record in read_lines(out)) == sorted(f"svamp-{i}" for i in range(30))
    assert not out.with_name("rationales.failures.jsonl").exists()


def test_a_run_where_every_question_fails_exits_with_an_error(teacher, tmp_path):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 3)
    teacher.failures = {i: [422] for i in range(3)}
    assert main(generate_argv(source, out, teacher.url)) == 1
    assert read_lines(out) == [] and len(failures_of(out)) == 3


def test_answers_in_flight_are_kept_when_the_run_stops(teacher, tmp_path, capsys):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 6)
    teacher.held = {1, 2}  # answered only once the 401 of question 0 has been sent
    teacher.failures = {0: [401]}
    teacher.gate_openers = {0}
    assert main(generate_argv(source, out, teacher.url, "--concurrency", "3")) == 2
    assert "HTTP 401" in capsys.readouterr().err
    assert sorted(record["id"] for record in read_lines(out)) == ["svamp-1", "svamp-2"]
    assert teacher.items_asked(1) == {0, 1, 2}  # nothing new was sent after the 401


def test_retry_after_is_capped(teacher, tmp_path):
    source, out = tmp_path / "questions.jsonl", tmp_path / "rationales.jsonl"
    write_questions(source, 1)
    teacher.failures = {0: [(429, 3600)]}
    started = time.monotonic()
    assert main(generate_argv(source, out, teacher.url, "--max-retry-after", "0.5")) == 0
    assert time.monotonic() - started < 30
    first, second = (entry["time"] for entry in teacher.log)
    assert 0.5 <= second - first < 10
    assert len(read_lines(out)) == 1
