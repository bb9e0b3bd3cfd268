"""The demo's results table, report.md and curves.png, and each student's change between its last
two curve evaluations (whether it levelled off)."""
import json

from mcckd.demo import task as demo_task
from mcckd.demo.settings import PLATEAU_POINTS, SPLITS, STUDENTS, K, curve_every


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
        lines.append(
            f"| {label} (`{name}/`) | {student['alpha']:g} | {student['k']} | {percent(metrics, name, 'id')} "
            f"| {percent(metrics, name, 'ood')} | {student['train_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def standard_error(metrics, split):
    """The binomial standard error of the MCC-KD minus CE accuracy on one test set, in points."""
    variance = sum(
        metrics[name][f"{split}_acc"] * (1 - metrics[name][f"{split}_acc"]) / metrics[name][f"{split}_n"]
        for name in STUDENTS
    )
    return 100 * variance ** 0.5


def difference_line(metrics):
    """MCC-KD less CE in points, with the seed and the sampling noise to read it against."""
    parts = [f"{100 * metrics['mcc_minus_ce'][f'{split}_acc']:+.1f} points {label} "
             f"(standard error {standard_error(metrics, split):.1f})" for split, label in SPLITS.items()]
    return f"MCC-KD minus CE, seed {metrics['seed']}, one run each: " + ", ".join(parts) + "."


def last_changes(folder):
    """{student: {split: accuracy at the last curve evaluation minus at the one before}} of
    the demo folder's runs (fractions; 0.0 with fewer than two evaluations)."""
    changes = {}
    for name in STUDENTS:
        _, evaluations = read_log(folder, name)
        previous, last = evaluations[max(len(evaluations) - 2, 0)], evaluations[-1]
        changes[name] = {split: last[f"eval_{split}_accuracy"] - previous[f"eval_{split}_accuracy"]
                         for split in SPLITS}
    return changes


def levelled_off(change):
    """Whether a student's last two evaluations are within PLATEAU_POINTS on every test set."""
    return all(abs(100 * change[split]) <= PLATEAU_POINTS + 1e-9 for split in SPLITS)


def points(value):
    """A fraction as signed percentage points, "+3.2" ("+0.0", never "-0.0")."""
    return f"{round(100 * value, 1) + 0.0:+.1f}"


def change_cells(change):
    """A student's change between its last two evaluations, in and out of distribution."""
    return " / ".join(points(change[split]) for split in SPLITS)


def levelled_line(metrics):
    """Whether each student levelled off, with its last change in / out of distribution in points
    (metrics["last_change"], from `last_changes`)."""
    parts = [f"{label} {'yes' if levelled_off(metrics['last_change'][name]) else 'no'} "
             f"({change_cells(metrics['last_change'][name])})" for name, (label, _) in STUDENTS.items()]
    return (f"Levelled off (the last two curve evaluations within {PLATEAU_POINTS} points in and out of "
            "distribution; the changes in points): " + ", ".join(parts) + ".")


def micro_batches(count):
    """ "one micro-batch", "4 micro-batches"."""
    return "one micro-batch" if count == 1 else f"{count} micro-batches"


def report(metrics):
    """report.md."""
    task, ev, student, training = metrics["task"], metrics["eval"], metrics["student"], metrics["training"]
    example = task["example"]
    frames = [f"- {'in' if frame in task['id_frames'] else 'out-of'}-distribution `{frame}`: {question}"
              for frame, question in demo_task.example_questions().items()]
    return "\n".join(
        [
            "# mcckd demo: MCC-KD against CE on synthetic arithmetic word problems",
            "",
            results_table(metrics),
            "",
            difference_line(metrics),
            levelled_line(metrics),
            "Each student learns to solve the problems, rather than only to write like the teacher, in a "
            "fairly sudden phase (see the curves) whose step moves with the seed; one run each says little "
            "about MCC-KD against CE, and its numbers change with the machine (see metrics.json's "
            "environment): compare the students over seeds with `mcckd demo --seeds 0-7`.",
            "",
            f"- Both students: the same random {student['parameters']:,}-parameter Llama "
            f"({student['num_hidden_layers']} layers, width {student['hidden_size']}), the same "
            f"{task['train_questions']} training questions with up to {K} teacher rationales each, the "
            f"same data order and {metrics['steps']} steps of {micro_batches(training['grad_accum'])} of at "
            f"most {training['max_tokens']} tokens; only alpha, the weight of the consistency loss, differs.",
            f"- Test sets: {task['test_questions']} new questions each, in the question frames of the "
            "training data (in-distribution) or in held-out ones (out-of-distribution). Greedy decoding, "
            f"at most {ev['max_new_tokens']} new tokens. Training time includes an evaluation every "
            f"{curve_every(metrics['steps'])} steps and after the last, on {task['curve_questions']} "
            "questions of each test set (the curves).",
            f"- The teacher wrote {task['teacher_rationales']} rationales; prepare dropped "
            + ", ".join(f"{count} ({reason})" for reason, count in task["rationales_dropped"].items())
            + ".",
            "- Reproduce an accuracy, in this folder: `mcckd eval --model mcc --data data/test_id.jsonl "
            f"--task {ev['task']} --batch-size {ev['batch_size']} --max-new-tokens {ev['max_new_tokens']} "
            "--out eval-again`",
            "",
            "One problem in every question frame:",
            "",
            *frames,
            "",
            f'The first training question, "{example["question"]}" (answer {example["answer"]}), '
            "and the rationales prepare kept for it:",
            "",
            *[f"{i}. {text}" for i, text in enumerate(example["rationales"], 1)],
            "",
            "![loss and accuracy curves](curves.png)",
            "",
        ]
    )


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
            accuracy_axis.plot(
                x,
                [100 * e[f"eval_{split}_accuracy"] for e in evaluations],
                style,
                color=color,
                marker="o",
                label=f"{label}, {SPLITS[split]}",
            )
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
