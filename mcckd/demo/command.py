"""`mcckd demo`: MCC-KD against plain cross-entropy, end to end on a CPU in minutes.

    mcckd demo [--out DIR] [--steps N] [--seed S | --seeds 0-7 [--workers W]] [--threads N]

The task and the teacher are programs (`mcckd.demo.task`): nothing downloads. The demo

1. writes the data: training questions and an in-distribution test set in the question frames
   the students learn, an out-of-distribution test set in held-out frames; the teacher samples
   rationales for every training question and `prepare_records` keeps the K most diverse
   correct ones, as `mcckd prepare` does;
2. trains two tiny random Llama students with the loop of `mcckd train` (a tokenizer trained
   on the fly, the fused loss on packed sequences), from the same initialisation, data order
   and budget: CE only (alpha = 0) and MCC-KD (alpha = MCC_ALPHA), both on all K rationales;
   both at once in two processes when there are 2 threads or more (`thread_plan`), one thread
   each by default, so that the numbers do not depend on the load;
3. evaluates each on both test sets as `mcckd eval` does (greedy decoding) and reports.

What it writes to DIR:

    data/teacher.jsonl          the teacher's raw rationales; data/prepare.txt, what prepare kept
    data/train.jsonl            the prepared training records (canonical JSONL)
    data/test_id.jsonl, data/test_ood.jsonl   the test questions with their gold answers
    tokenizer/                  the students' tokenizer, trained on data/train.jsonl (also in ce/, mcc/)
    ce/, mcc/                   the final checkpoints (`mcckd eval --model DIR/mcc ...`)
    runs/ce/, runs/mcc/         each run's config.yaml and metrics.jsonl (`mcckd train`'s log)
    runs/ce.log, runs/mcc.log   what each student's process printed (both students at once)
    eval/{ce,mcc}-{id,ood}/     predictions.jsonl, summary.json, summary.md of each evaluation
    metrics.json, report.md, curves.png
                                metrics.json's "environment": torch, threads (each student's),
                                students at once, CPU, platform, versions

The numbers of one run depend on the machine (thread count and CPU change the float path); the
seed study, `--seeds 0-7` (`mcckd.demo.study`), is how to compare the two students.
"""
from pathlib import Path

from transformers.utils import logging as transformers_logging

from mcckd.arguments import non_negative_int, positive_int
from mcckd.demo.environment import MAX_THREADS, free_cores, set_threads, thread_plan
from mcckd.demo.report import difference_line, levelled_line, results_table
from mcckd.demo.runner import run_demo
from mcckd.demo.settings import SEED, SIZES, STEPS
from mcckd.demo.study import parse_seeds, run_study, summary_table
from mcckd.errors import InputError


def add_arguments(parser):
    """Arguments of `mcckd demo`."""
    parser.add_argument(
        "--out", default="mcckd-demo",
        help="folder to write to, new or empty, or with --seeds a study to resume (default: mcckd-demo)",
    )
    parser.add_argument("--steps", type=positive_int, default=STEPS,
                        help=f"optimizer steps of each student (default: {STEPS})")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=non_negative_int, default=SEED,
                       help=f"seed of the data, the initialisation and the data order (default: {SEED})")
    seeds.add_argument("--seeds", type=parse_seeds,
                       help="a seed study: the demo for each seed (0-7, or 0,3,5), resumable; writes "
                            "DIR/seed-S/ and DIR/study.json, study.md, study.png")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="with --seeds: seeds run at once, each in a process of one thread (default: 1)")
    parser.add_argument("--threads", type=positive_int,
                        help=f"torch CPU threads in all: with 2 or more, both students train at once, "
                             f"half each (default: the free cores, at most {MAX_THREADS})")


def choose_threads(requested):
    """Set torch's threads per student from `requested`, else from the free cores (affinity less
    load) at most MAX_THREADS (`thread_plan`); returns (students at once, the line that says so)."""
    free = free_cores()
    threads = requested or min(MAX_THREADS, free)
    at_once, each = thread_plan(threads)
    set_threads(each)
    why = "--threads" if requested else f"{free} free cores, at most {MAX_THREADS}"
    plan = "both students at once" if at_once > 1 else "one student at a time"
    return at_once, f"torch threads: {threads} ({why}): {plan}, {each} thread{'s' * (each > 1)} each"


def check_workers(args):
    """--workers needs --seeds, and sets each worker's threads itself."""
    if not args.seeds:
        raise InputError("--workers runs several seeds at once: pass --seeds too")
    if args.threads:
        raise InputError("--workers runs each seed with one thread: leave out --threads")


def run(args):
    """`mcckd demo`: data, two students, evaluation, report; prints the table."""
    transformers_logging.disable_progress_bar()  # our bars own the terminal
    at_once = 1
    if args.workers > 1:
        check_workers(args)
        print(f"torch threads: 1 in each of {args.workers} worker processes (--workers), "
              "one student at a time in each", flush=True)
    else:
        at_once, line = choose_threads(args.threads)
        print(line, flush=True)
    if args.seeds:
        return run_seed_study(args, at_once)
    metrics = run_demo(Path(args.out), steps=args.steps, seed=args.seed, sizes=SIZES,
                       students_at_once=at_once)
    print()
    print(results_table(metrics))
    print(f"\n{difference_line(metrics)}\n{levelled_line(metrics)}")
    print(f"wrote {args.out}/ (report.md, metrics.json, curves.png) in {metrics['seconds'] / 60:.1f} minutes")
    return 0


def run_seed_study(args, students_at_once):
    """`mcckd demo --seeds ...`: the demo per seed, then the paired comparison; prints its table."""
    study = run_study(Path(args.out), seeds=args.seeds, steps=args.steps, sizes=SIZES, workers=args.workers,
                      students_at_once=students_at_once)
    print()
    print(summary_table(study))
    print(f"\nwrote {args.out}/ (study.md, study.json, study.png, seed-*/)")
    return 0
