"""Outputs that survive a crash: append-only JSON-lines files where each record is made durable
before the next one is written and a rerun reads back which ids are done (cutting off a line
torn by a crash mid-write), and files replaced whole or not at all."""
import json
import os
from pathlib import Path

from mcckd.errors import InputError


def read_written(path):
    """The records (dicts with an "id") of an append-only output file, in file order; [] when
    it does not exist.

    A last line without its newline was torn by a crash mid-write: it is cut off the file, so
    its question is done again. Any other unreadable line is an error, not ours to repair.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    complete_bytes = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                break
            complete_bytes += len(line)
            if line.strip():
                records.append(record_of_line(line, path, number))
    if complete_bytes < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(complete_bytes)
            os.fsync(handle.fileno())
    return records


def finished_ids(path):
    """Ids of the questions already written to `path` (empty if it does not exist); repairs a
    torn last line as `read_written` does."""
    return {str(record["id"]) for record in read_written(path)}


def record_of_line(line, path, number):
    """The record on one line of an output file; it must have an id."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "id" not in record:
        raise InputError(f"{path}:{number}: not a record written by mcckd (a JSON object with an id)")
    return record


def check_unique_ids(records, path):
    """InputError when two records share an id: resuming tells questions apart by id."""
    seen = set()
    for record in records:
        if record.id in seen:
            raise InputError(f"{path}: two records have the id {record.id!r}")
        seen.add(record.id)


def append_lines(handle, records):
    """Append records as JSON lines (a binary handle) and make them durable before returning."""
    handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())


def append_line(handle, record):
    """Append one record as a JSON line and make it durable before returning."""
    append_lines(handle, [record])


def replace_file(path, text):
    """Write `text` to `path` all or nothing: a temporary file beside it, fsynced, renamed over
    it, and the folder fsynced so that the rename survives a power loss."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_directory(folder):
    """Make the entries of `folder` (new files, renames) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
