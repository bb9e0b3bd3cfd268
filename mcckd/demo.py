"""`mcckd demo`: MCC-KD against plain cross-entropy, end to end on a CPU in minutes.

    mcckd demo [--out DIR] [--steps N] [--seed S]

The task and the teacher are programs (`mcckd.demo_task`): nothing downloads. The demo

1. writes the data: training questions and an in-distribution test set in the question frames
   the students learn, an out-of-distribution test set in held-out frames; the teacher samples
   rationales for every training question and `prepare_records` keeps the K most diverse
   correct ones, as `mcckd prepare` does;
2. trains two tiny random Llama students with the loop of `mcckd train` (a tokenizer trained
   on the fly, the fused loss on packed sequences), from the same initialisation, data order
   and budget: CE only (alpha = 0) and MCC-KD (alpha = MCC_ALPHA), both on all K rationales;
3. evaluates each on both test sets as `mcckd eval` does (greedy decoding) and reports.

What it writes to DIR:

    data/teacher.jsonl          the teacher's raw rationales; data/prepare.txt, what prepare kept
    data/train.jsonl            the prepared training records (canonical JSONL)
    data/test_id.jsonl, data/test_ood.jsonl   the test questions with their gold answers
    tokenizer/                  the students' tokenizer, trained on data/train.jsonl (also in ce/, mcc/)
    ce/, mcc/                   the final checkpoints (`mcckd eval --model DIR/mcc ...`)
    runs/ce/, runs/mcc/         each run's config.yaml and metrics.jsonl (`mcckd train`'s log)
    eval/{ce,mcc}-{id,ood}/     predictions.jsonl, summary.json, summary.md of each evaluation
    metrics.json, report.md, curves.png
"""
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from transformers.utils import logging as transformers_logging

from mcckd import demo_task
from mcckd.cli import non_negative_int, positive_int
from mcckd.config import Config, build, validate
from mcckd.data import prepare_records, read_records, write_records
from mcckd.errors import InputError
from mcckd.evaluate import evaluate_model, load_checkpoint, predict, summarize, write_report
from mcckd.train import train, training_texts
from mcckd.word_tokenizer import train_word_tokenizer

K = 4  # rationales per question
MCC_ALPHA = 0.1  # the paper's weight of the consistency term
STEPS = 1200
SEED = 0
# The student: about 0.8M parameters.
STUDENT = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256}
TRAINING = {
    "lr": 3e-3, "min_lr_ratio": 0.1, "grad_accum": 4, "device": "cpu", "log_every": 10, "save_every": 0,
    "keep_last": 1, "tensorboard": False,
}
# Micro-batches of one question (about 370 tokens): on a CPU the packed attention's
# block-diagonal mask costs N^2 per micro-batch of N tokens, so small ones are the fastest.
MAX_LENGTH = 144  # the longest training sequence is about 125 tokens
MAX_TOKENS = K * MAX_LENGTH
# Large enough that BPE merges every word and number of the training text into one token: a
# number is one symbol, so copying it and adding are what the student learns, not digit carries.
VOCAB_SIZE = 1024
EVAL_BATCH_SIZE = 100
MAX_NEW_TOKENS = 96  # the longest training target (rationale, answer sentence) is about 75 tokens
CURVE_POINTS = 8  # evaluations during each run, for the accuracy curves


@dataclass(frozen=True)
class Sizes:
    """How many questions each part of the demo uses."""

    train: int = 5000  # seen about once: fresh questions teach more than repeated ones
    test: int = 300  # in each test set
    curve: int = 100  # of each test set, evaluated CURVE_POINTS times during training
    teacher_samples: int = 8  # rationales the teacher writes per training question


SIZES = Sizes()
STUDENTS = {"ce": ("CE only", 0.0), "mcc": ("MCC-KD", MCC_ALPHA)}
SPLITS = {"id": "in-distribution", "ood": "out-of-distribution"}


def add_arguments(parser):
    """Arguments of `mcckd demo`."""
    parser.add_argument("--out", default="mcckd-demo", help="folder to write to, new or empty (default: mcckd-demo)")
    parser.add_argument("--steps", type=positive_int, default=STEPS,
                        help=f"optimizer steps of each student (default: {STEPS})")
    parser.add_argument("--seed", type=non_negative_int, default=SEED,
                        help=f"seed of the data, the initialisation and the data order (default: {SEED})")


def run(args):
    """`mcckd demo`: data, two students, evaluation, report; prints the table."""
    transformers_logging.disable_progress_bar()  # our bars own the terminal
    metrics = run_demo(Path(args.out), steps=args.steps, seed=args.seed, sizes=SIZES)
    print()
    print(results_table(metrics))
    print(f"\n{difference_line(metrics)}\nwrote {args.out}/ (report.md, metrics.json, curves.png) "
          f"in {metrics['seconds'] / 60:.1f} minutes")
    return 0


def run_demo(out, *, steps, seed, sizes):
    """Write the data, train and evaluate both students, write the report; returns metrics.json."""
    started = time.perf_counter()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder: remove it or pass another --out")
    data = write_data(out / "data", seed, sizes)
    write_tokenizer(out / "tokenizer", read_records(data["train"]))
    test_sets = {split: read_records(data[split]) for split in SPLITS}
    results = {}
    for name, (label, alpha) in STUDENTS.items():
        tqdm.write(f"\n== {label} student (alpha = {alpha:g}, K = {K}, {steps} steps, seed {seed})")
        results[name] = train_and_evaluate(out, name, alpha, steps, seed, data, test_sets, sizes)
    metrics = {
        "task": task_summary(data, sizes),
        **results,
        "mcc_minus_ce": {key: results["mcc"][key] - results["ce"][key] for key in ("id_acc", "ood_acc")},
        "seed": seed,
        "steps": steps,
        "student": {**STUDENT, "parameters": results["ce"]["parameters"]},
        "training": {**TRAINING, "k": K, "max_tokens": MAX_TOKENS, "max_length": MAX_LENGTH},
        "eval": {"task": demo_task.TASK, "batch_size": EVAL_BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS},
    }
    plot_curves(out, metrics)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report(metrics), encoding="utf-8")
    return metrics


def write_data(folder, seed, sizes):
    """Problems, teacher rationales and prepared records; {"teacher", "train", "id", "ood",
    "prepare"}: the paths, and prepare's report."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"mcckd-demo-{seed}")
    train_problems = demo_task.make_problems(rng, sizes.train, demo_task.ID_FRAMES)
    seen = {problem.question for problem in train_problems}
    splits = {"id": demo_task.make_problems(rng, sizes.test, demo_task.ID_FRAMES, exclude=seen),
              "ood": demo_task.make_problems(rng, sizes.test, demo_task.OOD_FRAMES)}
    teacher = [demo_task.to_record(problem, f"train-{i}", demo_task.teacher_rationales(problem, rng,
                                                                                     sizes.teacher_samples))
               for i, problem in enumerate(tqdm(train_problems, desc="teacher", unit="question"))]
    kept, prepare_report = prepare_records(teacher, K, min_rationales=2, progress=True)
    paths = {"teacher": folder / "teacher.jsonl", "train": folder / "train.jsonl",
             "id": folder / "test_id.jsonl", "ood": folder / "test_ood.jsonl"}
    write_records(paths["teacher"], teacher)
    write_records(paths["train"], kept)
    for split, problems in splits.items():
        write_records(paths[split], [demo_task.to_record(p, f"{split}-{i}") for i, p in enumerate(problems)])
    (folder / "prepare.txt").write_text(prepare_report.format() + "\n", encoding="utf-8")
    return {**paths, "prepare": prepare_report}


def write_tokenizer(folder, records):
    """The students' tokenizer, trained on the training text as `mcckd train` would train it,
    but with whole numbers."""
    train_word_tokenizer(training_texts(records), VOCAB_SIZE, split_digits=False).save_pretrained(folder)


def student_config(out, name, alpha, steps, seed, data):
    """The training config of one student (what `mcckd train --config` would read)."""
    tree = {
        "model": {"config": STUDENT, "tokenizer": str(out / "tokenizer"), "attn_backend": "sdpa"},
        "data": {"train": str(data["train"]), "task": demo_task.TASK, "num_rationales": K,
                 "max_tokens": MAX_TOKENS, "max_length": MAX_LENGTH},
        "train": {**TRAINING, "out_dir": str(out / "runs" / name), "seed": seed, "max_steps": steps,
                  "warmup_steps": steps // 10, "alpha": alpha},
        # the runs evaluate through `curve_evaluation`; eval.data only satisfies the config's check
        "eval": {"data": str(data["id"]), "task": demo_task.TASK, "every": curve_every(steps),
                 "batch_size": EVAL_BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS},
    }
    config = build(Config, tree, "")
    validate(config)
    return config


def curve_every(steps):
    """Steps between the evaluations for the accuracy curves."""
    return max(1, steps // CURVE_POINTS)


def curve_evaluation(test_sets, n):
    """The training loop's evaluation hook: accuracy on the first n questions of each test set."""
    def evaluate(model, tokenizer, step):
        return {f"{split}_accuracy": evaluate_model(model, tokenizer, records[:n], demo_task.TASK,
                                                    batch_size=EVAL_BATCH_SIZE,
                                                    max_new_tokens=MAX_NEW_TOKENS)["accuracy"]
                for split, records in test_sets.items()}
    return evaluate


def train_and_evaluate(out, name, alpha, steps, seed, data, test_sets, sizes):
    """Train one student, keep its final checkpoint as DIR/name, evaluate it on both test sets."""
    config = student_config(out, name, alpha, steps, seed, data)
    started = time.perf_counter()
    result = train(config, evaluate=curve_evaluation(test_sets, sizes.curve))
    train_seconds = time.perf_counter() - started
    folder = keep_model(result["checkpoint"], out / name)
    model, tokenizer = load_checkpoint(folder)
    summaries = {split: evaluate_checkpoint(model, tokenizer, folder, data[split], records,
                                            out / "eval" / f"{name}-{split}")
                 for split, records in test_sets.items()}
    last = result["metrics"]
    return {
        "alpha": alpha,
        "k": K,
        **{f"{split}_{key}": summaries[split][key] for split in SPLITS for key in ("acc", "correct", "n")},
        "final_loss": last["loss"], "final_ce": last["ce"], "final_kl": last["kl"],
        "train_seconds": round(train_seconds, 1),
        "checkpoint": name,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def keep_model(checkpoint, folder):
    """Move the run's final (and only) checkpoint to `folder`."""
    shutil.move(checkpoint, folder)
    checkpoint.parent.rmdir()  # the run's checkpoints/ folder, now empty
    return folder


def evaluate_checkpoint(model, tokenizer, folder, data_path, records, report_dir):
    """`mcckd eval --model folder --data data_path` with the demo's batch size and length:
    writes its report to report_dir and returns its summary, with "acc" = the accuracy."""
    started = time.perf_counter()
    rows = predict(model, tokenizer, records, demo_task.TASK, batch_size=EVAL_BATCH_SIZE,
                   max_new_tokens=MAX_NEW_TOKENS, progress=True)
    summary = {**summarize(rows, demo_task.TASK), "model": str(folder), "data": str(data_path),
               "max_new_tokens": MAX_NEW_TOKENS, "seconds": round(time.perf_counter() - started, 3)}
    write_report(report_dir, rows, summary)
    return {**summary, "acc": summary["accuracy"]}


def task_summary(data, sizes):
    """metrics.json's description of the task and its data."""
    prepare_report, example = data["prepare"], read_records(data["train"])[0]
    return {
        "name": "two- and three-step arithmetic word problems (synthetic)",
        "answers": demo_task.TASK,
        "train_questions": prepare_report.questions_kept,
        "test_questions": sizes.test,
        "curve_questions": sizes.curve,
        "id_frames": list(demo_task.ID_FRAMES),
        "ood_frames": list(demo_task.OOD_FRAMES),
        "teacher_rationales": prepare_report.rationales_read,
        "rationales_dropped": dict(prepare_report.rationales_dropped),
        "rationales_per_question": {str(k): v for k, v in sorted(prepare_report.histogram.items())},
        "example": {key: getattr(example, key) for key in ("question", "answer", "rationales")},
    }


def percent(metrics, name, split):
    """"72.3% (217/300)"."""
    student = metrics[name]
    return f"{100 * student[f'{split}_acc']:.1f}% ({student[f'{split}_correct']}/{student[f'{split}_n']})"


def results_table(metrics):
    """The results as a markdown table, one row per student."""
    lines = ["| student | alpha | K | in-distribution | out-of-distribution | training time |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, (label, _) in STUDENTS.items():
        student = metrics[name]
        lines.append(f"| {label} (`{name}/`) | {student['alpha']:g} | {student['k']} | {percent(metrics, name, 'id')} "
                     f"| {percent(metrics, name, 'ood')} | {student['train_seconds']:.0f} s |")
    return "\n".join(lines)


def standard_error(metrics, split):
    """The binomial standard error of the MCC-KD minus CE accuracy on one test set, in points."""
    variance = sum(metrics[name][f"{split}_acc"] * (1 - metrics[name][f"{split}_acc"]) / metrics[name][f"{split}_n"]
                   for name in STUDENTS)
    return 100 * variance ** 0.5


def difference_line(metrics):
    """MCC-KD less CE in points, with the seed and the sampling noise to read it against."""
    parts = [f"{100 * metrics['mcc_minus_ce'][f'{split}_acc']:+.1f} points {label} "
             f"(standard error {standard_error(metrics, split):.1f})" for split, label in SPLITS.items()]
    return f"MCC-KD minus CE, seed {metrics['seed']}, one run each: " + ", ".join(parts) + "."


def report(metrics):
    """report.md."""
    task, ev, student = metrics["task"], metrics["eval"], metrics["student"]
    example = task["example"]
    frames = [f"- {'in' if frame in task['id_frames'] else 'out-of'}-distribution `{frame}`: {question}"
              for frame, question in demo_task.example_questions().items()]
    return "\n".join([
        "# mcckd demo: MCC-KD against CE on synthetic arithmetic word problems",
        "",
        results_table(metrics),
        "",
        difference_line(metrics),
        "Each student learns to solve the problems, rather than only to write like the teacher, in a "
        "fairly sudden phase (see the curves) whose step moves with the seed; one run each says little "
        "about MCC-KD against CE: compare several seeds (`--seed`).",
        "",
        f"- Both students: the same random {student['parameters']:,}-parameter Llama "
        f"({student['num_hidden_layers']} layers, width {student['hidden_size']}), the same "
        f"{task['train_questions']} training questions with up to {K} teacher rationales each, the same data "
        f"order and {metrics['steps']} steps of {metrics['training']['grad_accum']} micro-batches of at most "
        f"{metrics['training']['max_tokens']} tokens; only alpha, the weight of the consistency loss, differs.",
        f"- Test sets: {task['test_questions']} new questions each, in the question frames of the training "
        "data (in-distribution) or in held-out ones (out-of-distribution). Greedy decoding, at most "
        f"{ev['max_new_tokens']} new tokens. Training time includes an evaluation every "
        f"{curve_every(metrics['steps'])} steps on {task['curve_questions']} questions of each test set (the curves).",
        f"- The teacher wrote {task['teacher_rationales']} rationales; prepare dropped "
        + ", ".join(f"{count} ({reason})" for reason, count in task["rationales_dropped"].items()) + ".",
        f"- Reproduce an accuracy, in this folder: `mcckd eval --model mcc --data data/test_id.jsonl --task "
        f"{ev['task']} --batch-size {ev['batch_size']} --max-new-tokens {ev['max_new_tokens']} --out eval-again`",
        "",
        "One problem in every question frame:",
        "",
        *frames,
        "",
        f"The first training question, \"{example['question']}\" (answer {example['answer']}), "
        "and the rationales prepare kept for it:",
        "",
        *[f"{i}. {text}" for i, text in enumerate(example["rationales"], 1)],
        "",
        "![loss and accuracy curves](curves.png)",
        "",
    ])


def read_log(out, name):
    """A run's metrics.jsonl: (training entries, evaluation entries)."""
    entries = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return [e for e in entries if "loss" in e], [e for e in entries if "eval_id_accuracy" in e]


def plot_curves(out, metrics):
    """curves.png: training CE, consistency KL and accuracy against the step, both students."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, (ce_axis, kl_axis, accuracy_axis) = plt.subplots(1, 3, figsize=(15, 4.2))
    for (name, (label, alpha)), color in zip(STUDENTS.items(), ("tab:blue", "tab:orange")):
        steps, evaluations = read_log(out, name)
        x = [e["step"] for e in steps]
        ce_axis.plot(x, [e["ce"] for e in steps], color=color, label=f"{label} (alpha={alpha:g})")
        kl_axis.plot(x, [e["kl"] for e in steps], color=color, label=label)
        x = [e["step"] for e in evaluations]
        for split, style in (("id", "-"), ("ood", "--")):
            accuracy_axis.plot(x, [100 * e[f"eval_{split}_accuracy"] for e in evaluations], style, color=color,
                               marker="o", label=f"{label}, {SPLITS[split]}")
    ce_axis.set(title="training cross-entropy", xlabel="step", yscale="log")
    kl_axis.set(title="consistency loss (mean pairwise KL / 2)", xlabel="step", yscale="log")
    accuracy_axis.set(title=f"accuracy on {metrics['task']['curve_questions']} questions of each test set",
                      xlabel="step", ylabel="%", ylim=(0, 100))
    for axis in (ce_axis, kl_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"mcckd demo, seed {metrics['seed']}")
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=110)
    plt.close(figure)
