"""What an evaluation writes: predictions.jsonl, summary.json and summary.md, each replaced whole."""
import json
from pathlib import Path

from mcckd.data.resumable import replace_file

PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "summary.md"


def write_report(out_dir, rows, summary):
    """predictions.jsonl, summary.json and summary.md in `out_dir` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    replace_file(out_dir / PREDICTIONS_FILE, lines)
    replace_file(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    replace_file(out_dir / TABLE_FILE, markdown_table(summary) + "\n")


def markdown_table(*summaries):
    """A markdown table of evaluation summaries, one row each; a `failed` column when a server
    failed some questions, a `voted over` column for self-consistency."""
    failed = any(summary.get("failed") for summary in summaries)
    voted = any(summary.get("num_samples", 1) > 1 for summary in summaries)
    header = "| data | task | model | n | correct | accuracy | missing |"
    rule = "| --- | --- | --- | ---: | ---: | ---: | ---: |"
    if failed:
        header, rule = header + " failed |", rule + " ---: |"
    if voted:
        header, rule = header + " voted over | one sample |", rule + " ---: | ---: |"
    lines = [header, rule]
    for summary in summaries:
        row = (f"| {Path(summary.get('data', '')).name} | {summary['task']} | {summary.get('model', '')} "
               f"| {summary['n']} | {summary['correct']} | {100 * summary['accuracy']:.2f}% "
               f"| {summary['missing']} |")
        if failed:
            row += f" {summary.get('failed', 0)} |"
        if voted:
            sample_accuracy = summary.get("sample_accuracy", summary["accuracy"])
            row += f" {summary.get('num_samples', 1)} | {100 * sample_accuracy:.2f}% |"
        lines.append(row)
    return "\n".join(lines)
