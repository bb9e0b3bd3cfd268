"""Records: one question, its gold answer and the teacher's rationales; reading and writing them.

Records are read from JSON arrays, JSON lines (`.gz` too), CSV, parquet and `datasets` datasets
(`mcckd.data.sources`), in three layouts:

    canonical: {"id": "svamp-12", "task": "svamp", "question": "...", "answer": "32",
                "rationales": ["...", "..."]}
    the paper's: {"instruction": "...", "output": "..." | ["...", ...], "label": "32"}
    GSM8K's:   {"question": "...", "answer": "... worked solution ...\n#### 72"}

or in any other, its fields named (`Fields`: --question-field, --answer-field,
--rationales-field). An answer with "####" is GSM8K's: the gold answer is what follows the last
"####" (the worked solution before it is not a rationale). A record without an id takes
"{task}-{index}". A record names its task, or takes the one given to `read_records`; a built-in
name resolves by itself, a task of the user's own (tasks.py) must be given to `read_records`.
Rationales may be a single string (the paper's "output"; a table's cell, which may also hold a
JSON array of strings). Gold answers are normalised as `extract_answer` normalises its output
(`1,200` -> `1200`, `c` -> `C`). Errors name the file and the line (or the row) of the record.
"""
import gzip
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mcckd.data.answers import normalize_answer
from mcckd.data.sources import is_tabular, iter_rows
from mcckd.data.tasks import BUILTIN_TASKS, TASKS, resolve_task
from mcckd.errors import InputError

# (question, answer, rationales) field names of the layouts recognised without a mapping
LAYOUTS = (("question", "answer", "rationales"), ("instruction", "label", "output"))
GSM8K_MARK = "####"


@dataclass
class Record:
    """A question, its gold answer (normalised) and its rationales."""

    id: str
    task: str
    question: str
    answer: str
    rationales: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fields:
    """The names of a record's fields in an input of another layout; None: the layout's own."""

    question: str | None = None
    answer: str | None = None
    rationales: str | None = None


def read_records(path, task=None, *, fields=Fields(), split=None, unique_ids=False):
    """All records of an input (`mcckd.data.sources`); InputError on bad or empty input.

    `task` (a name, a Task or a task mapping, see tasks.py) is the task of records that carry
    none (the paper's layout); a record whose own task differs from it is an error. `fields`
    maps the fields of another layout, `split` chooses the split of a dataset. With
    `unique_ids`, a repeated id is an error naming both lines (resuming tells records apart by id).
    """
    records, first_seen = [], {}
    for where, record in iter_records(path, task, fields=fields, split=split):
        if unique_ids and record.id in first_seen:
            raise InputError(f"{where}: the id {record.id!r} is already used at {first_seen[record.id]}")
        first_seen.setdefault(record.id, where)
        records.append(record)
    if not records:
        raise InputError(f"{path}: no records (the input is empty)")
    return records


def iter_records(path, task=None, *, fields=Fields(), split=None, skip=None):
    """(where, Record) for each record of an input, where naming its file and line or row.

    An invalid record raises InputError, or with `skip`, is passed over after a call
    skip(where, reason). The input itself must be readable either way.
    """
    if task is not None:
        task = resolve_task(task, str(path))
    tabular = is_tabular(path)
    for index, (where, value) in enumerate(iter_rows(path, split)):
        try:
            yield where, parse_record(value, index, task, where, fields=fields, tabular=tabular)
        except InputError as error:
            if skip is None:
                raise
            skip(where, str(error).removeprefix(f"{where}: "))


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


def parse_record(value, index, task, where, *, fields=Fields(), tabular=False):
    """A Record from one row of any layout; InputError prefixed with `where`.

    `tabular`: the row is a table's, whose rationales cell is text (one rationale, or a JSON
    array of them).
    """
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    question, answer, rationales = record_fields(value, fields, where)
    if isinstance(rationales, str) and (tabular or rationales_text_allowed(value, fields)):
        rationales = rationales_of_text(rationales) if tabular else [rationales]
    answer = gsm8k_gold(answer, where)
    record_task = value.get("task", task.name if task else None)
    check_fields(question, answer, rationales, record_task, task, where)
    # The paper's files write "no rationale" as "".
    rationales = [text for text in rationales if text.strip()]
    gold = normalize_answer(answer, task or BUILTIN_TASKS[record_task])
    if gold is None:
        raise InputError(f"{where}: answer {answer!r} is not a valid {record_task} answer")
    record_id = str(value.get("id", f"{record_task}-{index}"))
    return Record(record_id, record_task, question.strip(), gold, rationales)


def record_fields(value, fields, where):
    """(question, answer, rationales) of a row: the named fields, else those of its layout."""
    layout = next((names for names in LAYOUTS if names[0] in value), None)
    if layout is None and fields.question is None:
        raise InputError(f"{where}: expected the keys question/answer/rationales or instruction/output/label "
                         f"(or name the fields: --question-field and the like); the record has "
                         f"{', '.join(map(str, value)) or 'none'}")
    layout = layout or LAYOUTS[0]
    found = []
    for role, named, default in zip(("question", "answer", "rationales"), asdict(fields).values(), layout):
        if named is not None and named not in value:
            raise InputError(f"{where}: no field {named!r} (the {role} field); the record has "
                             f"{', '.join(map(str, value))}")
        found.append(value.get(named or default, [] if role == "rationales" else None))
    return tuple(found)


def rationales_text_allowed(value, fields):
    """Whether a string stands for one rationale: in the paper's layout ("output": "...") and
    in named fields, not in the canonical layout, whose writer always writes a list."""
    return fields.rationales is not None or "question" not in value


def rationales_of_text(text):
    """A table cell's rationales: the JSON array of strings it holds, else the cell itself."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return [text]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
    return [text]


def gsm8k_gold(answer, where):
    """The gold answer of GSM8K's layout (what follows the last "####"), else `answer` itself."""
    if not isinstance(answer, str) or GSM8K_MARK not in answer:
        return answer
    gold = answer.rsplit(GSM8K_MARK, 1)[1].strip()
    if not gold:
        raise InputError(f"{where}: nothing follows {GSM8K_MARK} in the answer")
    return gold


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
