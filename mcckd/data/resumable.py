"""Append-only JSON-lines outputs that survive a crash: each record is flushed and fsynced
before the next is written, and a rerun reads back which ids are done (cutting off a line
torn by a crash mid-write)."""
import json
import os
from pathlib import Path

from mcckd.errors import InputError


def finished_ids(path):
    """Ids of the questions already written to `path` (empty if it does not exist).

    A last line without its newline was torn by a crash mid-write: it is cut off the file, so
    its question is asked again. Any other unreadable line is an error, not ours to repair.
    """
    path = Path(path)
    if not path.exists():
        return set()
    ids = set()
    complete_bytes = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                break
            complete_bytes += len(line)
            if line.strip():
                ids.add(record_id_of_line(line, path, number))
    if complete_bytes < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(complete_bytes)
            os.fsync(handle.fileno())
    return ids


def record_id_of_line(line, path, number):
    """The id of the record on one line of an output file."""
    try:
        record_id = json.loads(line)["id"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}:{number}: not a record written by mcckd generate") from None
    return str(record_id)


def append_line(handle, record):
    """Append one record as a JSON line and make it durable before returning."""
    handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())
