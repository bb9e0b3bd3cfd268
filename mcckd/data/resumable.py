"""Files that survive a crash: append-only JSON-lines outputs (each record flushed and fsynced
before the next is written; a rerun reads back what is done, cutting off a line torn by a
crash mid-write), files replaced whole, and the fsyncs that make a rename durable."""
import json
import os
from pathlib import Path

from mcckd.errors import InputError


def complete_lines(path):
    """[(line number, line bytes with its newline)] of `path` (empty if it does not exist).

    A last line without its newline was torn by a crash mid-write: it is cut off the file
    (durably), so what it held is written again.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines, complete_bytes = [], 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                break
            complete_bytes += len(line)
            lines.append((number, line))
    if complete_bytes < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(complete_bytes)
            os.fsync(handle.fileno())
    return lines


def read_written(path):
    """The records (dicts with an "id") of an append-only output file, in file order; [] when
    it does not exist. A torn last line is cut off (`complete_lines`); any other unreadable
    line is an error, not ours to repair."""
    return [record_of_line(line, path, number) for number, line in complete_lines(path) if line.strip()]


def finished_ids(path):
    """Ids of the questions already written to `path` (empty if it does not exist)."""
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


def append_lines(handle, records):
    """Append records as JSON lines (a binary handle) and make them durable before returning."""
    handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())


def append_line(handle, record):
    """Append one record as a JSON line and make it durable before returning."""
    append_lines(handle, [record])


def fsync_path(path):
    """Flush a file's or a directory's contents to disk (a directory: its entries, so that a
    file created or renamed in it survives a power loss)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_lines(path, lines):
    """Replace `path` whole by `lines` (bytes, each with its newline): written beside it,
    fsynced, renamed over it, the rename fsynced; a crash leaves the old file or the new."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_path(path.parent)


def replace_file(path, text):
    """Write `text` to `path` all or nothing (`replace_lines`)."""
    replace_lines(path, [text.encode("utf-8")])
