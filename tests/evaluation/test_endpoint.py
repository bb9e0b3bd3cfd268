"""mcckd eval --endpoint against a small OpenAI-compatible server on 127.0.0.1 that answers from
a real transformers model (the memorised student, exported with mcckd export): the same
predictions and accuracy as in-process evaluation, several test sets in one call, resuming
after kill -9 without asking twice, questions the server rejects, self-consistency."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from memorised import write_paper_layout
from transformers import AutoModelForCausalLM, AutoTokenizer

from mcckd.cli import main
from mcckd.data import write_records
from mcckd.data.answers import extract_answer
from mcckd.evaluation.voting import majority_vote

REPO = Path(__file__).resolve().parents[2]
LIFETIME = 300  # seconds: the server stops by itself even if a test forgets it


class ModelServer(ThreadingHTTPServer):
    """/v1/completions (a text or token-id prompt) and /v1/chat/completions (the folder's chat
    template) from a transformers model folder, on 127.0.0.1 only.

    Greedy at temperature 0, else `n` samples from the full distribution (seeded by the
    request's `seed`); generation stops at the EOS ids of the folder's generation_config.json,
    as vLLM does. failures[question] lists what the next requests for that question get before
    a real answer: an HTTP status or "drop". Questions in `held` wait for `gate`. Every request
    is logged with the phase it arrived in. It shuts itself down after LIFETIME seconds.
    """

    daemon_threads = True

    def __init__(self, folder):
        super().__init__(("127.0.0.1", 0), ModelHandler)
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.generating = threading.Lock()
        self.lock = threading.Lock()
        self.log = []
        self.failures = {}
        self.held = set()
        self.gate = threading.Event()
        self.phase = 1
        self.questions = []  # the questions the log entries are matched against
        self.stopper = threading.Timer(LIFETIME, self.shutdown)
        self.stopper.daemon = True

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def question_of(self, prompt_ids):
        text = self.tokenizer.decode(prompt_ids)
        return next((question for question in self.questions if question in text), None)

    def answered(self, phase=None):
        """Counter of the questions that got a real answer (in `phase`, or in all)."""
        with self.lock:
            return Counter(entry["question"] for entry in self.log
                           if entry["status"] == 200 and (phase is None or entry["phase"] == phase))

    def generate(self, prompt_ids, n, temperature, max_tokens, seed):
        options = {"do_sample": False} if temperature == 0 else {
            "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0,
            "num_return_sequences": n}
        input_ids = torch.tensor([prompt_ids])
        with self.generating, torch.no_grad():
            if temperature:
                torch.manual_seed(seed or 0)
            output = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                         **options)
        texts = [self.tokenizer.decode(row[len(prompt_ids):], skip_special_tokens=True) for row in output]
        return texts * n if temperature == 0 else texts


class ModelHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path.endswith("/chat/completions")
        if chat:
            prompt_ids = list(server.tokenizer.apply_chat_template(
                body["messages"], add_generation_prompt=True, tokenize=True, return_dict=False))
        elif isinstance(body["prompt"], str):
            prompt_ids = server.tokenizer(body["prompt"])["input_ids"]
        else:
            prompt_ids = body["prompt"]
        question = server.question_of(prompt_ids)
        with server.lock:
            planned = server.failures.get(question, [])
            action = planned.pop(0) if planned else 200
            server.log.append({"question": question, "phase": server.phase, "status": action, "chat": chat,
                               "prompt_ids": prompt_ids, "n": body.get("n", 1),
                               "temperature": body.get("temperature", 1.0)})
        try:
            self.respond(server, question, action, body, prompt_ids, chat)
        except OSError:
            pass  # the client was killed while we waited

    def respond(self, server, question, action, body, prompt_ids, chat):
        if action == "drop":
            self.close_connection = True
            return
        if action != 200:
            self.send_json(action, {"error": {"message": f"injected {action}"}})
            return
        if question in server.held:
            server.gate.wait(timeout=60)
        texts = server.generate(prompt_ids, body.get("n", 1), body.get("temperature", 1.0),
                                body.get("max_tokens", 16), body.get("seed"))
        if chat:
            choices = [{"index": k, "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop"} for k, text in enumerate(texts)]
        else:
            choices = [{"index": k, "text": text, "finish_reason": "stop"} for k, text in enumerate(texts)]
        self.send_json(200, {"id": "cmpl-test", "choices": choices})

    def send_json(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def exported(memorised, tmp_path_factory):
    """(export folder, records, test file) of the memorised student, written by mcckd export."""
    model, tokenizer, records, _ = memorised
    folder = tmp_path_factory.mktemp("student")
    model.save_pretrained(folder / "checkpoint")
    tokenizer.save_pretrained(folder / "checkpoint")
    assert main(["export", str(folder / "checkpoint"), "--out", str(folder / "export")]) == 0
    data = folder / "test.json"
    write_paper_layout(data, records)
    return folder / "export", records, data


@pytest.fixture
def server(exported):
    folder, records, _ = exported
    served = ModelServer(folder)
    served.questions = [record.question for record in records]
    served.stopper.start()
    thread = threading.Thread(target=served.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served
    served.gate.set()
    served.stopper.cancel()
    served.shutdown()
    served.server_close()


def endpoint_argv(server, data, out, *extra, task="svamp"):
    return ["eval", "--endpoint", server.url, "--model", "student", "--data", str(data), "--task", task,
            "--out", str(out), "--max-new-tokens", "40", "--retry-delay", "0.01", *extra]


def local_argv(folder, data, out, *extra):
    return ["eval", "--model", str(folder), "--data", str(data), "--task", "svamp", "--out", str(out),
            "--max-new-tokens", "40", "--batch-size", "2", "--device", "cpu", *extra]


def rows_of(folder):
    return [json.loads(line) for line in (Path(folder) / "predictions.jsonl").read_text().splitlines()]


def counts(folder):
    summary = json.loads((Path(folder) / "summary.json").read_text())
    return {key: summary.get(key) for key in ("task", "n", "correct", "accuracy", "missing", "failed")}


@pytest.fixture(scope="module")
def in_process(exported, tmp_path_factory):
    """The in-process evaluation of the exported student: its results folder."""
    folder, _, data = exported
    out = tmp_path_factory.mktemp("in-process")
    assert main(local_argv(folder, data, out)) == 0
    return out


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_the_server_gives_the_in_process_predictions(exported, in_process, server, tmp_path, api, memorised):
    folder, records, data = exported
    out = tmp_path / "remote"
    assert main(endpoint_argv(server, data, out, "--tokenizer", str(folder), "--api", api,
                              "--concurrency", "3")) == 0
    assert rows_of(out) == rows_of(in_process)
    assert [row["generated"] for row in rows_of(out)] == memorised[3]
    assert counts(out) == counts(in_process) == {"task": "svamp", "n": 5, "correct": 3, "accuracy": 0.6,
                                                 "missing": 1, "failed": None}
    assert (out / "summary.md").read_text().count("60.00%") == 1
    assert server.answered() == Counter(record.question for record in records)
    assert {entry["chat"] for entry in server.log} == {api == "chat"}
    assert {(entry["n"], entry["temperature"]) for entry in server.log} == {(1, 0.0)}  # greedy


def test_the_prompt_is_the_training_prompts_token_ids(exported, server, tmp_path, memorised):
    from mcckd.data.tokenize import encode_prompt

    folder, records, data = exported
    _, tokenizer, _, _ = memorised
    assert main(endpoint_argv(server, data, tmp_path / "remote", "--tokenizer", str(folder))) == 0
    sent = {entry["question"]: entry["prompt_ids"] for entry in server.log}
    assert sent == {record.question: encode_prompt(tokenizer, record.question) for record in records}


def test_several_sets_in_one_call(exported, in_process, server, tmp_path):
    folder, records, data = exported
    subset = tmp_path / "subset" / "test.jsonl"
    subset.parent.mkdir()
    write_records(subset, records[1:4])
    out = tmp_path / "sets"
    argv = ["eval", "--endpoint", server.url, "--model", str(folder), "--data", str(data), "--task", "svamp",
            "--data", str(subset), "--task", "svamp", "--out", str(out), "--max-new-tokens", "40"]
    assert main(argv) == 0
    first, second = out / f"{data.parent.name}-test", out / "subset-test"
    assert rows_of(first) == rows_of(in_process)
    assert rows_of(second) == rows_of(in_process)[1:4]
    assert counts(second)["n"] == 3 and counts(second)["correct"] == 2
    table = (out / "summary.md").read_text().splitlines()
    assert len(table) == 4 and "| test.json |" in table[2] and "| test.jsonl |" in table[3]


def test_a_killed_run_resumes_without_asking_twice(exported, in_process, server, tmp_path):
    folder, records, data = exported
    out = tmp_path / "remote"
    held = {record.question for record in records[3:]}
    server.held = set(held)
    server.failures = {record.question: [503, "drop"] for record in records}  # retried faults on the way
    argv = endpoint_argv(server, data, out, "--tokenizer", str(folder), "--concurrency", "2")
    process = subprocess.Popen([sys.executable, "-m", "mcckd", *argv], cwd=REPO, env=dict(os.environ),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until three answers are in and the held ones are asked
            assert process.poll() is None, process.communicate()
            written = out / "predictions.jsonl"
            if written.exists() and written.read_bytes().count(b"\n") == 3 and held <= set(server.answered()):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the first run did not get that far")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate(timeout=30)
    first = {row["id"] for row in rows_of(out)}
    assert first == {record.id for record in records[:3]}
    with open(out / "predictions.jsonl", "ab") as handle:
        handle.write(b'{"id": "svamp-3", "question": "How')  # a write torn by the kill

    server.phase, server.failures = 2, {}
    server.gate.set()
    assert main(argv) == 0
    assert server.answered(phase=2) == Counter(held)  # only what the first run did not write
    assert rows_of(out) == rows_of(in_process)
    assert counts(out) == counts(in_process)


def test_a_question_the_server_rejects_is_recorded_then_retried(exported, in_process, server, tmp_path,
                                                                capsys):
    folder, records, data = exported
    out = tmp_path / "remote"
    server.failures = {records[1].question: [400] * 5}
    argv = endpoint_argv(server, data, out, "--tokenizer", str(folder))
    assert main(argv) == 0
    assert counts(out) == {"task": "svamp", "n": 5, "correct": 2, "accuracy": 0.4, "missing": 1, "failed": 1}
    assert "| failed |" in capsys.readouterr().out
    (failure,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["id"] == records[1].id and "HTTP 400" in failure["reason"]
    assert [row["id"] for row in rows_of(out)] == [record.id for i, record in enumerate(records) if i != 1]

    server.phase = 2
    assert main(argv) == 0
    assert server.answered(phase=2) == Counter()  # skipped without --retry-failed
    server.phase, server.failures = 3, {}
    assert main([*argv, "--retry-failed"]) == 0
    assert server.answered(phase=3) == Counter([records[1].question])
    assert rows_of(out) == rows_of(in_process) and counts(out) == counts(in_process)
    assert not (out / "failures.jsonl").exists()


def test_self_consistency_votes_over_the_servers_samples(exported, server, tmp_path):
    folder, records, data = exported
    out = tmp_path / "voted"
    assert main(endpoint_argv(server, data, out, "--tokenizer", str(folder), "--num-samples", "5",
                              "--temperature", "1.5")) == 0
    assert {(entry["n"], entry["temperature"]) for entry in server.log} == {(5, 1.5)}
    rows = rows_of(out)
    assert any(len(set(row["samples"])) > 1 for row in rows)  # really sampled
    for row, record in zip(rows, records):
        answers = [extract_answer(text, "svamp", question=record.question) for text in row["samples"]]
        assert len(row["samples"]) == 5 and row["sample_answers"] == answers
        assert row["extracted"] == majority_vote(answers, "svamp")
        assert row["correct"] == (row["extracted"] == record.answer)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["correct"] == sum(row["correct"] for row in rows)
    assert summary["sample_accuracy"] == pytest.approx(
        sum(answer == row["gold"] for row in rows for answer in row["sample_answers"]) / 25)


def test_out_is_checked_before_any_request(exported, server, tmp_path, capsys):
    folder, _, data = exported
    taken = tmp_path / "file.txt"
    taken.write_text("not a folder")
    assert main(endpoint_argv(server, data, taken, "--tokenizer", str(folder))) == 2
    assert "--out" in capsys.readouterr().err and server.log == []
    out = tmp_path / "remote"
    assert main(endpoint_argv(server, data, out, "--tokenizer", str(folder))) == 0
    asked = len(server.log)
    assert main(endpoint_argv(server, data, out, "--tokenizer", str(folder), "--max-new-tokens", "8")) == 2
    assert "max_new_tokens: 40 there, 8 now" in capsys.readouterr().err
    assert len(server.log) == asked


def test_the_completions_api_needs_the_students_tokenizer(exported, server, tmp_path, capsys):
    _, _, data = exported
    assert main(endpoint_argv(server, data, tmp_path / "out")) == 2
    assert "--tokenizer" in capsys.readouterr().err and server.log == []


def test_help_documents_the_server_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for option in ("--endpoint", "--api", "--tokenizer", "--num-samples", "--temperature", "--concurrency",
                   "--max-retry-after", "--retry-failed", "completions", "chat"):
        assert option in text
