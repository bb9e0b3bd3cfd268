"""`mcckd prepare`: raw teacher rationales in, the K most diverse correct ones per question out.

    mcckd prepare INPUT (--task TASK | --task-file TASK.yaml) --k K --out OUT.jsonl
                  [--think keep|unwrap|strip] [--dropped DROPPED.jsonl] [--ngram 3] [--skip-invalid]

Reads INPUT (any layout and input format, see records.py and sources.py), keeps for each
question the rationales that reach the gold answer (read by the task's rules, tasks.py), keeps
of each think block what `--think` says (reasoning.py), drops exact and near duplicates,
chooses the K most diverse, writes canonical records and prints a report: questions read and
kept, what was dropped and why, a histogram of rationales per question, and the mean pairwise
similarity before and after the choice. `--dropped` writes one JSON line per rationale left
out: the record's id, the rationale's position among the record's non-empty rationales, the
reason, the answer read out of it (null when none), the gold answer, the position of the one
it repeats (duplicates), the text.

The input is refused, naming the line (or row), when it is empty, when a record is invalid,
has no rationales, or repeats an earlier record's id; with --skip-invalid such records are
skipped instead, each reported with its line and reason.
"""
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from tqdm import tqdm

from mcckd.arguments import positive_int, unit_fraction
from mcckd.data.input_options import add_input_arguments, input_fields
from mcckd.data.reasoning import THINK_MODES
from mcckd.data.records import iter_records, write_json_lines, write_records
from mcckd.data.select import DROP_REASONS, select_rationales
from mcckd.data.tasks import add_task_arguments, task_from_args
from mcckd.errors import InputError


@dataclass
class PrepareReport:
    """What `prepare_records` did. `histogram` maps a rationale count to the number of kept
    questions with that many; the similarities are means over questions with two or more."""

    questions_read: int = 0
    rationales_read: int = 0
    rationales_dropped: Counter = field(default_factory=lambda: Counter(dict.fromkeys(DROP_REASONS, 0)))
    questions_dropped: Counter = field(default_factory=Counter)
    histogram: Counter = field(default_factory=Counter)
    similarities_before: list = field(default_factory=list)
    similarities_after: list = field(default_factory=list)
    ngram: int = 3

    @property
    def questions_kept(self):
        """Questions written out."""
        return sum(self.histogram.values())

    def kept_with_at_least(self, n):
        """Kept questions that have n or more rationales."""
        return sum(count for size, count in self.histogram.items() if size >= n)

    def format(self):
        """The report as printed by `mcckd prepare`."""
        kept_rationales = sum(size * count for size, count in self.histogram.items())
        lines = [f"read {self.questions_read} questions with {self.rationales_read} rationales",
                 "rationales dropped:"]
        lines += [f"  {reason:<18}{self.rationales_dropped[reason]:>7}" for reason in DROP_REASONS]
        lines.append("questions dropped:")
        lines += [
            f"  {reason:<32}{count:>7}" for reason, count in sorted(self.questions_dropped.items())
        ] or ["  none"]
        lines.append(f"kept {self.questions_kept} questions with {kept_rationales} rationales, "
                     f"{self.kept_with_at_least(2)} of them with two or more")
        lines.append("rationales per question:")
        lines += histogram_lines(self.histogram) or ["  none"]
        lines.append(f"mean pairwise {self.ngram}-gram Jaccard similarity: "
                     f"{format_mean(self.similarities_before)} before the choice, "
                     f"{format_mean(self.similarities_after)} after "
                     f"({len(self.similarities_after)} questions with two or more)")
        return "\n".join(lines)


def histogram_lines(histogram, width=40):
    """One line per rationale count: the count, the number of questions and a bar."""
    most = max(histogram.values(), default=0)
    return [
        f"  {size:>3} {count:>7} " + "#" * round(width * count / most)
        for size, count in sorted(histogram.items())
    ]


def format_mean(values):
    """The mean to three places, "n/a" for none."""
    return f"{sum(values) / len(values):.3f}" if values else "n/a"


def prepare_records(
    records, k, *, task=None, think="keep", ngram=3, near_duplicate=0.8, min_rationales=1, max_subsets=1000,
    progress=False, on_drop=None,
):
    """The records that keep at least `min_rationales` (>= 1) selected rationales, at most k
    each, and the PrepareReport.

    `task` reads the answers (default: each record's own built-in task), `think` is what the
    kept rationales hold of a think block (keep, unwrap, strip); `on_drop(record, drop)` is
    called for every rationale left out (a `mcckd.data.select.Drop`).
    """
    report = PrepareReport(ngram=ngram)
    kept = []
    too_few = "no rationale left" if min_rationales == 1 else f"fewer than {min_rationales} rationales left"
    for record in tqdm(records, desc="selecting", unit="question", disable=not progress):
        selection = select_rationales(
            record, k, task=task, think=think, ngram=ngram, near_duplicate=near_duplicate,
            max_subsets=max_subsets,
        )
        if on_drop is not None:
            for drop in selection.drops:
                on_drop(record, drop)
        report.questions_read += 1
        report.rationales_read += len(record.rationales)
        report.rationales_dropped.update(selection.dropped)
        if len(selection.rationales) < min_rationales:
            report.questions_dropped[too_few] += 1
            continue
        kept.append(replace(record, rationales=selection.rationales))
        report.histogram[len(selection.rationales)] += 1
        if selection.similarity_after is not None:
            report.similarities_before.append(selection.similarity_before)
            report.similarities_after.append(selection.similarity_after)
    return kept, report


def add_arguments(parser):
    """The options of `mcckd prepare`."""
    parser.add_argument("input", metavar="INPUT", help="teacher rationales: JSON array or JSON lines "
                                                       "(.gz too), CSV, parquet, a dataset")
    add_task_arguments(parser)
    parser.add_argument("--k", required=True, type=positive_int, help="rationales to keep per question")
    parser.add_argument("--out", required=True, metavar="OUT.jsonl", help="where the canonical records go")
    parser.add_argument(
        "--ngram", type=positive_int, default=3, help="n of the word n-grams compared (default 3)"
    )
    parser.add_argument("--near-duplicate", type=unit_fraction, default=0.8, metavar="SIMILARITY",
                        help="drop a rationale this similar to an earlier one (default 0.8)")
    parser.add_argument("--min-rationales", type=positive_int, default=1, metavar="N",
                        help="drop questions left with fewer rationales (default 1)")
    parser.add_argument("--max-subsets", type=positive_int, default=1000, metavar="N",
                        help="search every subset up to this many, else choose greedily (default 1000)")
    parser.add_argument("--think", choices=THINK_MODES, default="keep",
                        help="what a rationale keeps of a <think> block: keep (as written, tags "
                             "included), unwrap (the reasoning without its tags, then the text after "
                             "it), strip (only the text after the block; a rationale with none is "
                             "dropped). The answer is read after </think> either way (default keep)")
    parser.add_argument("--dropped", metavar="DROPPED.jsonl",
                        help="also write each rationale left out, with the reason and the answer read "
                             "out of it, one JSON line each")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip invalid records, those without rationales and repeated ids, "
                             "reporting each, instead of stopping at the first")
    add_input_arguments(parser)


def read_input(args, task):
    """The valid records of INPUT and the (where, reason) of those skipped (--skip-invalid).

    InputError naming the line (or row) for an invalid record, one without rationales, or an id
    already used, unless --skip-invalid; InputError for an input with no (valid) records.
    """
    skipped, records, first_seen = [], [], {}

    def refuse(where, reason):
        if not args.skip_invalid:
            raise InputError(f"{where}: {reason} (--skip-invalid skips such records)")
        skipped.append((where, reason))

    for where, record in iter_records(args.input, task, fields=input_fields(args), split=args.split,
                                      skip=refuse):
        if not record.rationales:
            refuse(where, "the record has no rationales")
        elif record.id in first_seen:
            refuse(where, f"the id {record.id!r} is already used at {first_seen[record.id]}")
        else:
            first_seen[record.id] = where
            records.append(record)
    if not records:
        raise InputError(f"{args.input}: no records (the input is empty)" if not skipped else
                         f"{args.input}: no valid records ({len(skipped)} skipped)")
    return records, skipped


def run(args):
    """Read, select, write, report; returns the exit code."""
    started = time.perf_counter()
    task = task_from_args(args)
    records, skipped = read_input(args, task)
    for where, reason in skipped:
        print(f"mcckd prepare: skipped {where}: {reason}", file=sys.stderr)
    dropped = []
    kept, report = prepare_records(
        records, args.k, task=task, think=args.think, ngram=args.ngram, near_duplicate=args.near_duplicate,
        min_rationales=args.min_rationales, max_subsets=args.max_subsets, progress=sys.stderr.isatty(),
        on_drop=(lambda record, drop: dropped.append(dropped_row(record, drop))) if args.dropped else None,
    )
    write_output(args.out, write_records, kept)
    if args.dropped:
        write_output(args.dropped, write_json_lines, dropped)
    print(f"{args.input} -> {args.out}" + (f" (dropped: {args.dropped})" if args.dropped else ""))
    if skipped:
        print(f"skipped {len(skipped)} invalid records (--skip-invalid; each with its reason on stderr)")
    print(report.format())
    print(f"took {time.perf_counter() - started:.1f} s")
    return 0


def dropped_row(record, drop):
    """The `--dropped` line of one rationale left out."""
    row = {"id": record.id, "rationale": drop.index, "reason": drop.reason, "extracted": drop.extracted,
           "gold": record.answer}
    if drop.duplicate_of is not None:
        row["duplicate_of"] = drop.duplicate_of
    row["text"] = record.rationales[drop.index]
    return row


def write_output(path, write, rows):
    """write(path, rows), an OSError reported as an InputError naming the file."""
    try:
        write(path, rows)
    except OSError as error:
        raise InputError(f"{path}: cannot write: {error.strerror or error}") from error
