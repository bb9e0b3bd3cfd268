"""Records: one question, its gold answer and the teacher's rationales; reading and writing them.

Two layouts are read, as a JSON array or as JSON lines, plain or gzip-compressed (`.gz`):

    canonical: {"id": "svamp-12", "task": "svamp", "question": "...", "answer": "32",
                "rationales": ["...", "..."]}
    the paper's: {"instruction": "...", "output": "..." | ["...", ...], "label": "32"}

Records of the paper's layout take the task given to `read_records` and the id
"{task}-{index}". A record names its task; a built-in name resolves by itself, a task of the
user's own (tasks.py) must be given to `read_records`. Gold answers are normalised as
`extract_answer` normalises its output (`1,200` -> `1200`, `c` -> `C`). Errors name the file and
the line where the record starts.
"""
import gzip
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mcckd.data.answers import normalize_answer
from mcckd.data.tasks import BUILTIN_TASKS, TASKS, resolve_task
from mcckd.errors import InputError


@dataclass
class Record:
    """A question, its gold answer (normalised) and its rationales."""

    id: str
    task: str
    question: str
    answer: str
    rationales: list[str] = field(default_factory=list)


def read_records(path, task=None):
    """All records of a JSON array or JSON-lines file (`.gz` too); InputError on bad input.

    `task` (a name, a Task or a task mapping, see tasks.py) is the task of records that carry
    none (the paper's layout); a record whose own task differs from it is an error.
    """
    if task is not None:
        task = resolve_task(task, str(path))
    text = read_text(path)
    records = []
    for index, (line, value) in enumerate(iter_json_values(text, path)):
        records.append(parse_record(value, index, task, f"{path}:{line}"))
    return records


def write_records(path, records):
    """Write records as canonical JSON lines (gzip for `.gz`), all or nothing."""
    write_json_lines(path, (asdict(record) for record in records))


def write_json_lines(path, rows):
    """Write JSON objects one a line (gzip for `.gz`), all or nothing.

    The lines go to a temporary file beside `path` that replaces it only once complete.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        # mkstemp makes the file private (0600): give it the mode a new file would get
        os.chmod(temporary, 0o666 & ~current_umask())
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(temporary, "wt", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def current_umask():
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_text(path):
    """The file's text, decompressed when it ends in `.gz`."""
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        return Path(path).read_text(encoding="utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read: {error}") from error


def iter_json_values(text, path):
    """(line, value) for each element of a JSON array, or each non-blank line of JSON lines."""
    body = text.lstrip()
    if body.startswith("["):
        yield from iter_json_array(text, path)
        return
    # Only "\n" ends a JSON line: str.splitlines would also split at U+2028 and the like,
    # which JSON strings may hold unescaped.
    for line, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            try:
                yield line, json.loads(raw)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line}: invalid JSON: {error.msg} (column {error.colno})") from None


def iter_json_array(text, path):
    """(line, value) for each element of the JSON array in `text`, the line where it starts."""
    decoder = json.JSONDecoder()
    position = skip_space(text, text.index("[") + 1)
    line, counted_to = 1, 0
    while position < len(text) and text[position] != "]":
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{path}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})"
            ) from None
        line += text.count("\n", counted_to, position)
        counted_to = position
        yield line, value
        position = skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position = skip_space(text, position + 1)
        elif position >= len(text) or text[position] != "]":
            raise InputError(
                f"{path}:{line_of(text, position)}: invalid JSON: expected ',' or ']' after a record"
            )
    if position >= len(text):
        raise InputError(f"{path}:{line_of(text, position)}: invalid JSON: the array is not closed")
    if text[position + 1:].strip():
        raise InputError(f"{path}:{line_of(text, position + 1)}: invalid JSON: text after the array")


def skip_space(text, position):
    """The first position at or after `position` that is not JSON whitespace."""
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def line_of(text, position):
    """The 1-based line number of `position` in `text`."""
    return text.count("\n", 0, position) + 1


def parse_record(value, index, task, where):
    """A Record from one JSON value of either layout; InputError prefixed with `where`."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    if "question" in value:
        question, answer, rationales = value["question"], value.get("answer"), value.get("rationales", [])
    elif "instruction" in value:
        question, answer, rationales = value["instruction"], value.get("label"), value.get("output", [])
        rationales = [rationales] if isinstance(rationales, str) else rationales
    else:
        raise InputError(f"{where}: expected the keys question/answer/rationales or instruction/output/label")
    record_task = value.get("task", task.name if task else None)
    check_fields(question, answer, rationales, record_task, task, where)
    # The paper's files write "no rationale" as "".
    rationales = [text for text in rationales if text.strip()]
    gold = normalize_answer(answer, task or BUILTIN_TASKS[record_task])
    if gold is None:
        raise InputError(f"{where}: answer {answer!r} is not a valid {record_task} answer")
    record_id = str(value.get("id", f"{record_task}-{index}"))
    return Record(record_id, record_task, question.strip(), gold, rationales)


def check_fields(question, answer, rationales, record_task, task, where):
    """InputError unless the fields have the types and values a record needs."""
    if record_task is None:
        raise InputError(f"{where}: the record names no task: give one (--task)")
    if task is not None and record_task != task.name:
        raise InputError(f"{where}: the record's task is {record_task!r}, expected {task.name!r}")
    if task is None and record_task not in TASKS:
        raise InputError(f"{where}: unknown task {record_task!r}: expected one of {', '.join(TASKS)}, "
                         "or give the definition of a task of your own (--task-file, data.task)")
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{where}: the question must be a non-empty string")
    if not isinstance(answer, (str, int, float)):
        raise InputError(f"{where}: the answer must be a string or a number, got {answer!r}")
    if not isinstance(rationales, list) or not all(isinstance(text, str) for text in rationales):
        raise InputError(f"{where}: the rationales must be a list of strings")


def record_texts(records):
    """All the text of the records (questions, answers, rationales): what an on-the-fly
    tokenizer is fitted to."""
    for record in records:
        yield record.question
        yield record.answer
        yield from record.rationales
