"""The demo's pipeline: data, two students trained and evaluated, the report (see `command.py`)."""
import contextlib
import json
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import torch
from tqdm import tqdm

from mcckd.data import prepare_records, read_records, write_records
from mcckd.data.records import record_texts
from mcckd.demo import task as demo_task
from mcckd.demo.environment import environment, start_worker
from mcckd.demo.report import last_changes, plot_curves, report
from mcckd.demo.settings import (
    EVAL_BATCH_SIZE,
    MAX_LENGTH,
    MAX_NEW_TOKENS,
    MAX_TOKENS,
    SPLITS,
    STUDENT,
    STUDENTS,
    TRAINING,
    VOCAB_SIZE,
    K,
    curve_every,
)
from mcckd.errors import InputError
from mcckd.evaluation.report import write_report
from mcckd.evaluation.scoring import predict, summarize
from mcckd.models.loading import load_checkpoint
from mcckd.models.word_tokenizer import train_word_tokenizer
from mcckd.training.config import Config, build, validate
from mcckd.training.loop import train


def run_demo(out, *, steps, seed, sizes, students_at_once=1):
    """Write the data, train and evaluate both students (one after the other, or both at once in
    two spawned processes with this process's torch threads each), write the report; returns
    metrics.json."""
    started = time.perf_counter()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder: remove it or pass another --out")
    data = write_data(out / "data", seed, sizes)
    students_tokenizer(read_records(data["train"])).save_pretrained(out / "tokenizer")
    test_sets = {split: read_records(data[split]) for split in SPLITS}
    jobs = {name: (out, name, alpha, steps, seed, paths_of(data), test_sets, sizes)
            for name, (_, alpha) in STUDENTS.items()}
    results = (train_at_once if students_at_once > 1 else train_in_turn)(out, jobs)
    metrics = {
        "task": task_summary(data, sizes),
        **results,
        "mcc_minus_ce": {key: results["mcc"][key] - results["ce"][key] for key in ("id_acc", "ood_acc")},
        "last_change": last_changes(out),
        "seed": seed,
        "steps": steps,
        "student": {**STUDENT, "parameters": results["ce"]["parameters"]},
        "training": {**TRAINING, "k": K, "max_tokens": MAX_TOKENS, "max_length": MAX_LENGTH},
        "eval": {"task": demo_task.TASK, "batch_size": EVAL_BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS},
        "environment": environment(students_at_once),
    }
    plot_curves(out, metrics)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report(metrics), encoding="utf-8")
    return metrics


def train_in_turn(out, jobs):
    """{name: train_and_evaluate's result} for each student, one after the other."""
    results = {}
    for name, job in jobs.items():
        tqdm.write(f"\n== {student_line(job)}")
        results[name] = train_and_evaluate(*job)
    return results


def train_at_once(out, jobs):
    """{name: train_and_evaluate's result}, every student at once in a spawned process with this
    process's torch threads, each printing to DIR/runs/name.log."""
    (out / "runs").mkdir()
    logs = {name: out / "runs" / f"{name}.log" for name in jobs}
    tqdm.write("\n== " + "; ".join(student_line(job) for job in jobs.values()))
    tqdm.write(f"   both at once, torch threads per student: {torch.get_num_threads()}; their progress: "
               + ", ".join(str(log) for log in logs.values()))
    results = {}
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn"), initializer=start_worker,
                             initargs=(torch.get_num_threads(),)) as pool:
        running = {pool.submit(logged_call, logs[name], train_and_evaluate, *job): name
                   for name, job in jobs.items()}
        for future in as_completed(running):
            name = running[future]
            results[name] = future.result()
            tqdm.write(done_line(name, results[name]))
    return {name: results[name] for name in jobs}


def student_line(job):
    """ "CE only student (alpha = 0, K = 4, 1200 steps, seed 0)"."""
    _, name, alpha, steps, seed, *_ = job
    return f"{STUDENTS[name][0]} student (alpha = {alpha:g}, K = {K}, {steps} steps, seed {seed})"


def done_line(name, result):
    """ "CE only student done: trained in 280 s; 91.0% in-distribution, 40.3% out-of-distribution"."""
    return (f"{STUDENTS[name][0]} student done: trained in {result['train_seconds']:.0f} s; "
            + ", ".join(f"{100 * result[f'{split}_acc']:.1f}% {label}" for split, label in SPLITS.items()))


def logged_call(log, function, *args, **kwargs):
    """function(*args, **kwargs) with its output (stdout and stderr) written to the file `log`."""
    with open(log, "w", encoding="utf-8") as file, \
            contextlib.redirect_stdout(file), contextlib.redirect_stderr(file):
        return function(*args, **kwargs)


def paths_of(data):
    """write_data's paths, without prepare's report."""
    return {key: value for key, value in data.items() if key != "prepare"}


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


def students_tokenizer(records):
    """The students' tokenizer, fitted to the records' text as `mcckd train` would fit it, but
    with whole numbers."""
    return train_word_tokenizer(record_texts(records), VOCAB_SIZE, split_digits=False)


def student_config(out, name, alpha, steps, seed, data):
    """The training config of one student (what `mcckd train --config` would read)."""
    tree = {
        "model": {"config": STUDENT, "tokenizer": str(out / "tokenizer"), "attn_backend": "sdpa"},
        "data": {"train": str(data["train"]), "task": demo_task.TASK, "num_rationales": K,
                 "max_tokens": MAX_TOKENS, "max_length": MAX_LENGTH},
        "train": {**TRAINING, "out_dir": str(out / "runs" / name), "seed": seed, "max_steps": steps,
                  "warmup_steps": steps // 10, "alpha": alpha},
        # the runs evaluate through `CurveEvaluation`; eval.data only satisfies the config's check
        "eval": {"data": str(data["id"]), "task": demo_task.TASK, "every": curve_every(steps),
                 "batch_size": EVAL_BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS},
    }
    config = build(Config, tree, "")
    validate(config)
    return config


class CurveEvaluation:
    """The training loop's evaluation hook: accuracy on the first n questions of each test set.
    It keeps the prediction rows of its latest evaluation and the step they were made at."""

    def __init__(self, test_sets, n):
        self.test_sets, self.n = test_sets, n
        self.step, self.answered = None, {}

    def __call__(self, model, tokenizer, step):
        self.answered = answer_test_sets(model, tokenizer, self.test_sets, self.n)
        self.step = step
        return {f"{split}_accuracy": summarize(rows, demo_task.TASK)["accuracy"]
                for split, (rows, _) in self.answered.items()}

    def final(self, steps):
        """`answer_test_sets` of the evaluation after the last step when it took every test
        question, else None."""
        whole = all(self.n >= len(records) for records in self.test_sets.values())
        return self.answered if self.step == steps and whole else None


def answer_test_sets(model, tokenizer, test_sets, n=None, *, progress=False):
    """{split: (prediction rows of its first n questions, seconds)}, answered greedily."""
    answered = {}
    for split, records in test_sets.items():
        started = time.perf_counter()
        rows = predict(model, tokenizer, records[:n], demo_task.TASK, batch_size=EVAL_BATCH_SIZE,
                       max_new_tokens=MAX_NEW_TOKENS, progress=progress)
        answered[split] = rows, time.perf_counter() - started
    return answered


def train_and_evaluate(out, name, alpha, steps, seed, data, test_sets, sizes):
    """Train one student, keep its final checkpoint as DIR/name, evaluate it on both test sets
    (the curve's evaluation after the last step is that evaluation, when it took every question)."""
    config = student_config(out, name, alpha, steps, seed, data)
    curve = CurveEvaluation(test_sets, sizes.curve)
    started = time.perf_counter()
    result = train(config, evaluate=curve)
    train_seconds = time.perf_counter() - started
    folder = keep_model(result["checkpoint"], out / name)
    model, tokenizer = load_checkpoint(folder)
    final = curve.final(steps) or answer_test_sets(model, tokenizer, test_sets, progress=True)
    summaries = {split: write_evaluation(rows, folder, data[split], seconds, out / "eval" / f"{name}-{split}")
                 for split, (rows, seconds) in final.items()}
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


def write_evaluation(rows, folder, data_path, seconds, report_dir):
    """The report `mcckd eval --model folder --data data_path` writes for these prediction rows
    (made in `seconds`), written to report_dir; returns its summary, with "acc" = the accuracy."""
    summary = {**summarize(rows, demo_task.TASK), "model": str(folder), "data": str(data_path),
               "max_new_tokens": MAX_NEW_TOKENS, "seconds": round(seconds, 3)}
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
