"""What an evaluation writes: predictions.jsonl, summary.json and summary.md."""
import json
from pathlib import Path

PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "summary.md"


def write_report(out_dir, rows, summary):
    """predictions.jsonl, summary.json and summary.md in `out_dir` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / TABLE_FILE).write_text(markdown_table(summary) + "\n", encoding="utf-8")


def markdown_table(summary):
    """One-row markdown table of an evaluation summary."""
    header = "| task | model | n | correct | accuracy | missing |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: |"
    row = (f"| {summary['task']} | {summary.get('model', '')} | {summary['n']} | {summary['correct']} "
           f"| {100 * summary['accuracy']:.2f}% | {summary['missing']} |")
    return "\n".join([header, rule, row])
