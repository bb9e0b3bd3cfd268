"""The rows of an input, each with where it is, for errors that name it.

    FILE.json, FILE.jsonl (.gz too)  a JSON array or JSON lines, read here: "FILE:LINE"
    FILE.csv, FILE.parquet           read with `datasets`: "FILE: row I"
    DIR                              a dataset saved with `save_to_disk`: "DIR[SPLIT]: row I"
    hf:NAME[:CONFIG]                 a dataset by its Hub name, as `datasets.load_dataset` finds
                                     it (offline, in the local cache): "hf:NAME[SPLIT]: row I"

Rows are counted from 0, as `datasets` and pandas index them (a CSV's header is no row). A
dataset with several splits needs `split`. A file with any other name is read as JSON. Text
may start with a UTF-8 byte-order mark; text that is not UTF-8 is an error naming its line.
CSV cells are read as text: an answer keeps its leading zeros.
"""
import csv
import gzip
import json
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from mcckd.errors import InputError

HUB_PREFIX = "hf:"
TABULAR = {".csv": "csv", ".parquet": "parquet"}


def iter_rows(source, split=None):
    """(where, value) for each row of `source` (see the module docstring), in order.

    `where` is "FILE:LINE" for JSON, "SOURCE: row I" for tables and datasets.
    """
    source = str(source)
    if source.startswith(HUB_PREFIX):
        yield from dataset_rows(source, load_hub_dataset(source), split)
        return
    path = Path(source)
    if path.is_dir():
        yield from dataset_rows(source, load_saved_dataset(path), split)
        return
    if split is not None:
        raise InputError(f"{source}: a split was given ({split!r}), but a file has none "
                         "(saved datasets and hf: names have splits)")
    if path.suffix.lower() in TABULAR:
        yield from table_rows(path, TABULAR[path.suffix.lower()])
        return
    for line, value in iter_json_values(read_text(path), path):
        yield f"{path}:{line}", value


def is_tabular(source):
    """Whether `source` is read as a table (its rows have flat cells) rather than as JSON."""
    source = str(source)
    return (source.startswith(HUB_PREFIX) or Path(source).is_dir()
            or Path(source).suffix.lower() in TABULAR)


def read_text(path):
    """The file's text (decompressed when it ends in `.gz`), without a leading byte-order mark."""
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = Path(path).read_bytes()
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read: {error}") from error
    return decode_utf8(data, path)


def decode_utf8(data, path):
    """`data` decoded as UTF-8 (a byte-order mark dropped); InputError naming the first bad line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        raise InputError(
            f"{path}:{line}: not valid UTF-8 (byte {column} of the line, 0x{data[error.start]:02x})"
        ) from None


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


def table_rows(path, kind):
    """(where, row) of a CSV or parquet file, read with `datasets`."""
    if not path.is_file():
        raise InputError(f"{path}: cannot read: no such file")
    options = {}
    if kind == "csv":
        header = csv_header(path)
        if header is None:
            return  # an empty file: no rows
        # every cell as its text (pandas would read "007" as 7), the header's names as they are
        options = dict(converters={name: str for name in header}, keep_default_na=False, index_col=False,
                       encoding="utf-8-sig")
    import datasets
    from pandas.errors import ParserWarning

    with tempfile.TemporaryDirectory() as cache, quiet_datasets(), warnings.catch_warnings():
        # pandas only warns when the first row has more cells than the header: a loss of data
        warnings.simplefilter("error", category=ParserWarning)
        try:
            table = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache,
                                          keep_in_memory=True, **options)
        except Exception as error:  # datasets wraps what pandas and pyarrow raise
            raise InputError(f"{path}: cannot read as {kind}: {root_cause(error, path)}") from None
    yield from ((f"{path}: row {index}", row) for index, row in enumerate(table))


def csv_header(path):
    """The column names of a CSV file (None when it is empty)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), None)
    except UnicodeDecodeError:
        decode_utf8(path.read_bytes(), path)  # raises, naming the line
    except (OSError, csv.Error) as error:
        raise InputError(f"{path}: cannot read as csv: {error}") from None


def root_cause(error, path):
    """The message of the innermost exception under `error`; for a decoding error, its line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    if isinstance(error, UnicodeDecodeError) and path is not None:
        decode_utf8(Path(path).read_bytes(), path)  # raises, naming the line
    return str(error).strip() or type(error).__name__


def load_saved_dataset(path):
    """A Dataset or DatasetDict saved with `save_to_disk` in folder `path`."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: a folder, but not a dataset saved with save_to_disk") from None


def load_hub_dataset(source):
    """`hf:NAME[:CONFIG]` loaded with `datasets.load_dataset`: a DatasetDict of its splits."""
    import datasets

    name, _, config = source[len(HUB_PREFIX):].partition(":")
    try:
        with quiet_datasets():
            return datasets.load_dataset(name, config or None)
    except Exception as error:  # not cached, no such config, no connection
        raise InputError(f"{source}: cannot load the dataset: {root_cause(error, None)}") from None


def dataset_rows(source, dataset, split):
    """(where, row) of a Dataset, or of the split of a DatasetDict (the only one by default)."""
    if hasattr(dataset, "keys"):  # a DatasetDict
        names = list(dataset.keys())
        if split is None and len(names) != 1:
            raise InputError(f"{source}: the dataset has the splits {', '.join(names)}: choose one "
                             "(--split, or the config's split key)")
        split = names[0] if split is None else split
        if split not in dataset:
            raise InputError(f"{source}: no split {split!r}; the dataset has {', '.join(names)}")
        dataset = dataset[split]
    elif split is not None:
        raise InputError(f"{source}: a split was given ({split!r}), but the dataset has no splits")
    label = source if split is None else f"{source}[{split}]"
    yield from ((f"{label}: row {index}", row) for index, row in enumerate(dataset))


@contextmanager
def quiet_datasets():
    """`datasets` without its progress bars (a table is read in a moment)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
