"""An evaluation's results folder: checked and created before any work starts, predictions
appended as they come (so a rerun resumes), the report written last.

    DIR/settings.json      what is evaluated (model or server, data, task, decoding); a rerun
                           with the same settings resumes, one with other settings is refused
    DIR/predictions.jsonl  rows appended and fsynced after every batch (in-process) or question
                           (server); rewritten in the order of the data once all are in
    DIR/failures.jsonl     questions a server failed for good, with the reason (they count as
                           wrong; `--retry-failed` asks them again)
    DIR/summary.json, DIR/summary.md   the accuracy, written last

Several data sets in one evaluation get a folder each, DIR/<name>, named after their files,
and DIR/summary.md holds one row per set.
"""
import json
from pathlib import Path

from mcckd.data.resumable import append_line, append_lines, finished_ids, read_written, replace_file
from mcckd.errors import InputError
from mcckd.evaluation.report import PREDICTIONS_FILE, write_report
from mcckd.evaluation.scoring import summarize

SETTINGS_FILE = "settings.json"
FAILURES_FILE = "failures.jsonl"


def set_names(paths):
    """A folder name for each data file: its stem, with its parent folder's name in front when
    stems repeat (GSM8K/test.json, SVAMP/test.json -> GSM8K-test, SVAMP-test)."""
    paths = [Path(path) for path in paths]
    names = [path.stem for path in paths]
    if len(set(names)) < len(names):
        names = [f"{path.parent.name}-{path.stem}" for path in paths]
    if len(set(names)) < len(names):
        names = [f"{index}-{name}" for index, name in enumerate(names, 1)]
    return names


def check_out(out):
    """InputError unless --out is a folder or can become one; creates it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {out}: cannot create the folder: {error}") from None
    return out


class ResultsFolder:
    """The results folder of one data set (the module docstring gives its files)."""

    def __init__(self, folder, settings):
        """Create `folder` or check the one there; InputError when it holds an evaluation with
        other settings, or predictions without settings."""
        self.folder = check_out(folder)
        self.predictions = self.folder / PREDICTIONS_FILE
        self.failures = self.folder / FAILURES_FILE
        path = self.folder / SETTINGS_FILE
        if path.exists():
            check_same_settings(path, settings)
        elif self.predictions.exists():
            raise InputError(f"--out {self.folder} holds predictions of another evaluation "
                             f"(no {SETTINGS_FILE}): choose another --out")
        else:
            try:
                replace_file(path, json.dumps(settings, indent=2) + "\n")
            except OSError as error:
                raise InputError(f"--out {self.folder}: cannot write there: {error}") from None

    def todo(self, records, *, retry_failed=False):
        """The records still to answer: not in the predictions, nor failed before (unless
        `retry_failed`)."""
        skip = finished_ids(self.predictions)
        if not retry_failed:
            skip |= finished_ids(self.failures)
        return [record for record in records if record.id not in skip]

    def append(self, rows):
        """Append prediction rows, durable before returning."""
        with open(self.predictions, "ab") as handle:
            append_lines(handle, rows)

    def record_failure(self, record, reason):
        """Note a question a server failed for good."""
        with open(self.failures, "ab") as handle:
            append_line(handle, {"id": record.id, "reason": reason})

    def finish(self, records, task, details):
        """Write the predictions in data order, summary.json and summary.md; the summary
        (`summarize` plus `details`).

        Only rows of `records` count; a question neither answered nor failed is an error (the
        run stopped early).
        """
        rows = {str(row["id"]): row for row in read_written(self.predictions)}
        failed = finished_ids(self.failures) - rows.keys()
        unanswered = [record.id for record in records if record.id not in rows and record.id not in failed]
        if unanswered:
            raise RuntimeError(f"{self.folder}: {len(unanswered)} questions are not answered yet")
        ordered = [rows[record.id] for record in records if record.id in rows]
        failed_here = sum(record.id in failed for record in records)
        summary = {**summarize(ordered, task, failed=failed_here), **details}
        write_report(self.folder, ordered, summary)
        if not failed_here:
            self.failures.unlink(missing_ok=True)
        return summary


def check_same_settings(path, settings):
    """InputError naming the settings that differ from those saved in `path`."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the settings of the evaluation there: {error}") from None
    changed = sorted(key for key in saved.keys() | settings.keys() if saved.get(key) != settings.get(key))
    if changed:
        described = "; ".join(f"{key}: {saved.get(key)!r} there, {settings.get(key)!r} now"
                              for key in changed)
        raise InputError(f"--out {path.parent} holds an evaluation with other settings ({described}): "
                         "choose another --out, or delete that folder to start over")
