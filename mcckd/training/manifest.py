"""A checkpoint's manifest, written last, and the check that a checkpoint folder is whole.

    manifest.json   {"format": 1, "files": {path relative to the folder: size in bytes}}

`seal` fsyncs every file and folder of a checkpoint written to its temporary folder, then
writes the manifest and fsyncs it and the folder, so that once the folder is renamed into place
a power loss cannot leave it incomplete. `damage` says why a folder is not a whole checkpoint:
no manifest or an unreadable one, a file the manifest lists missing or of another size, or a
file that does not read as its format says:

    *.safetensors   the header is JSON and its tensors end exactly where the file ends
    *.pt            (torch.save's zip) every entry's CRC-32 matches its bytes
    *.json          parses as JSON

so a truncated, emptied or torn file is found without loading the model, and the training
states are checked byte for byte by their own checksums.
"""
import json
import os
import struct
import zipfile
from pathlib import Path

from mcckd.data.resumable import fsync_path

MANIFEST = "manifest.json"
FORMAT = 1


def seal(folder):
    """fsync every file and folder under `folder`, then write its manifest (fsynced too)."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
        fsync_path(path)
    with open(folder / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump({"format": FORMAT, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(folder)


def damage(folder):
    """Why `folder` is not a whole checkpoint, naming the file; None when it verifies."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (the checkpoint was not completed)"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        sizes = {str(name): int(size) for name, size in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is unreadable"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, its {MANIFEST} says {size}"
        problem = format_damage(path)
        if problem:
            return f"{name}: {problem}"
    return None


def format_damage(path):
    """What is wrong with a file's contents by its format, or None."""
    if path.suffix == ".safetensors":
        return safetensors_damage(path)
    if path.suffix == ".pt":
        return zip_damage(path)
    if path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError:
            return "not valid JSON"
    return None


def safetensors_damage(path):
    """A safetensors file is an 8-byte little-endian header length n, n bytes of JSON, then
    the tensors' bytes, whose data_offsets must end exactly at the end of the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return "too short for a safetensors header"
        (length,) = struct.unpack("<Q", prefix)
        if 8 + length > size:
            return f"its header claims {length} bytes, more than the file holds"
        try:
            header = json.loads(handle.read(length))
            ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return "its safetensors header is not valid"
    if max(ends, default=0) != size - 8 - length:
        return f"its tensors end at byte {8 + length + max(ends, default=0)} but the file has {size}"
    return None


def zip_damage(path):
    """torch.save writes a zip archive with a CRC-32 per entry: all of them must match."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"not a readable torch file ({error})"
    return None if bad is None else f"entry {bad} fails its CRC-32 check"
