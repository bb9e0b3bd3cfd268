"""`mcckd demo --seeds 0-7`: the demo once per seed, and MCC-KD against CE paired over the seeds.

One run says little: the step at which a student starts solving the problems moves with the seed,
and the float path moves with the machine. The study runs both students for every seed (same data,
initialisation and order within a seed), one seed after the other or in `workers` processes of
one thread each, keeps each seed's demo folder DIR/seed-S/ as it finishes (a rerun skips the seeds
whose metrics.json exists) and writes, per test set, each student's mean accuracy and the paired
difference MCC-KD - CE with its 95% t-interval over the seeds, and per seed how much each
student's accuracy changed between its last two curve evaluations (levelled off: within
PLATEAU_POINTS on both test sets), and each student's curve averaged over the seeds with the
mean last change and its 95% t-interval (one seed's greedy answers flicker between nearby
checkpoints; the mean over seeds shows whether the students as such still improve):

    DIR/seed-S/                  one demo folder per seed (metrics.json, report.md, ...)
    DIR/seed-S.log               what a worker process printed for that seed (workers > 1)
    DIR/study.json, study.md, study.png
"""
import argparse
import json
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from tqdm import tqdm

from mcckd.demo.environment import environment, start_worker
from mcckd.demo.intervals import MAX_SAMPLES, mean_interval
from mcckd.demo.report import change_cells, last_changes, levelled_off, points, read_log
from mcckd.demo.runner import logged_call, run_demo
from mcckd.demo.settings import PLATEAU_POINTS, SPLITS, STUDENTS
from mcckd.errors import InputError


def parse_seeds(text: str) -> list[int]:
    """argparse type: "0-7" or "0,3,5" (or both, "0-3,9"), 2 to MAX_SAMPLES distinct seeds >= 0."""
    seeds = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if match is None:
            raise argparse.ArgumentTypeError(f"expected seeds like 0-7 or 0,3,5, got {text!r}")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise argparse.ArgumentTypeError(f"the range {part.strip()} runs backwards")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed appears twice in {text!r}")
    if not 2 <= len(seeds) <= MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"expected 2 to {MAX_SAMPLES} seeds, got {len(seeds)}")
    return seeds


def check_study_folder(out):
    """A study writes into a new or empty folder, or resumes one that holds only its own files."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder: pass another --out")
    strangers = [p.name for p in out.iterdir() if not p.name.startswith(("seed-", "study."))] \
        if out.exists() else []
    if strangers:
        raise InputError(f"{out} holds files that are not a seed study's ({', '.join(sorted(strangers))}): "
                         "remove them or pass another --out")


def finished_seed(folder, steps, sizes):
    """The metrics.json of a seed finished earlier with the same steps and test size, else None."""
    path = folder / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if metrics["steps"] != steps or metrics["task"]["test_questions"] != sizes.test:
        raise InputError(f"{path} was run with --steps {metrics['steps']} and "
                         f"{metrics['task']['test_questions']} test questions, not {steps} and {sizes.test}: "
                         "resume with the same --steps or pass another --out")
    return metrics


def run_study(out, *, seeds, steps, sizes, workers=1, students_at_once=1):
    """Run (or resume) the demo for every seed (one at a time, its students `students_at_once`,
    or `workers` seeds at once), then write study.json, study.md, study.png; returns study.json."""
    check_study_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = []
    for seed in seeds:
        folder = out / f"seed-{seed}"
        if finished_seed(folder, steps, sizes) is not None:
            tqdm.write(f"seed {seed}: finished earlier, kept {folder}/metrics.json")
            continue
        if folder.exists():  # a run stopped part-way: its folder is incomplete
            shutil.rmtree(folder)
        todo.append(seed)
    if workers == 1:
        for i, seed in enumerate(todo, 1):
            tqdm.write(f"\n=== seed {seed} ({i} of {len(todo)} to run)")
            run_demo(out / f"seed-{seed}", steps=steps, seed=seed, sizes=sizes,
                     students_at_once=students_at_once)
    else:
        run_in_workers(out, todo, steps, sizes, workers)
    folders = [out / f"seed-{seed}" for seed in seeds]
    study = summarize({seed: finished_seed(folder, steps, sizes) for seed, folder in zip(seeds, folders)},
                      steps, {seed: last_changes(folder) for seed, folder in zip(seeds, folders)},
                      mean_curves(folders))
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    (out / "study.md").write_text(study_report(study), encoding="utf-8")
    plot_study(out, study)
    return study


def run_in_workers(out, seeds, steps, sizes, workers):
    """The demo for each seed in `workers` fresh processes of one torch thread each; each writes
    its seed's folder and its output to DIR/seed-S.log."""
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=start_worker) as pool:
        running = {pool.submit(run_logged, out, seed, steps, sizes): seed for seed in seeds}
        tqdm.write(f"{len(seeds)} seeds in {workers} workers; each writes DIR/seed-S.log")
        for done, future in enumerate(as_completed(running), 1):
            metrics = future.result()
            tqdm.write(f"seed {running[future]} finished ({done} of {len(seeds)}): MCC-KD - CE "
                       + ", ".join(f"{points(metrics['mcc_minus_ce'][f'{split}_acc'])} points {label}"
                                   for split, label in SPLITS.items()))


def run_logged(out, seed, steps, sizes):
    """One worker's job: the demo for `seed` (its students one after the other), its output to
    DIR/seed-S.log; returns metrics.json."""
    return logged_call(out / f"seed-{seed}.log", run_demo, out / f"seed-{seed}", steps=steps, seed=seed,
                       sizes=sizes)


def mean_curves(folders):
    """{student: {"steps": the steps every run evaluated at, split: the mean accuracy over the
    seed folders' runs at each of those steps}}."""
    curves = {}
    for name in STUDENTS:
        runs = [{entry["step"]: entry for entry in read_log(folder, name)[1]} for folder in folders]
        steps = sorted(set.intersection(*(set(run) for run in runs)))
        curves[name] = {"steps": steps, **{
            split: [sum(run[step][f"eval_{split}_accuracy"] for run in runs) / len(runs) for step in steps]
            for split in SPLITS}}
    return curves


def summarize(per_seed, steps, changes, curves):
    """study.json: per seed each student's accuracies and the change between its last two curve
    evaluations (`changes`, from `last_changes`); per test set the means and the paired
    MCC-KD - CE difference (accuracy as a fraction) with its 95% t-interval; each student's
    mean curve (`curves`, from `mean_curves`) and mean last change with its 95% t-interval."""
    seeds = list(per_seed)
    accuracy = {name: {split: [per_seed[s][name][f"{split}_acc"] for s in seeds] for split in SPLITS}
                for name in STUDENTS}
    splits = {}
    for split in SPLITS:
        differences = [m - c for m, c in zip(accuracy["mcc"][split], accuracy["ce"][split])]
        splits[split] = {**{f"{name}_mean": sum(accuracy[name][split]) / len(seeds) for name in STUDENTS},
                         "differences": differences, "mcc_minus_ce": mean_interval(differences)}
    return {
        "seeds": seeds,
        "steps": steps,
        "test_questions": per_seed[seeds[0]]["task"]["test_questions"],
        "per_seed": [{"seed": s, **{name: {split: accuracy[name][split][i] for split in SPLITS}
                                    for name in STUDENTS},
                      "last_change": changes[s],
                      "environment": per_seed[s].get("environment")} for i, s in enumerate(seeds)],
        "splits": splits,
        "levelled_off": {name: sum(levelled_off(changes[s][name]) for s in seeds) for name in STUDENTS},
        "mean_curves": curves,
        "mean_last_change": {name: {split: mean_interval([changes[s][name][split] for s in seeds])
                                    for split in SPLITS} for name in STUDENTS},
        "environment": environment(),
    }


def summary_table(study):
    """The study's result as a markdown table, one row per test set."""
    lines = ["| test set | CE only | MCC-KD | MCC-KD - CE (mean) | 95% t-interval |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for split, label in SPLITS.items():
        row, difference = study["splits"][split], study["splits"][split]["mcc_minus_ce"]
        lines.append(f"| {label} | {100 * row['ce_mean']:.1f}% | {100 * row['mcc_mean']:.1f}% "
                     f"| {points(difference['mean'])} points "
                     f"| [{points(difference['low'])}, {points(difference['high'])}] |")
    return "\n".join(lines)


def seed_cells(row, split):
    """One seed's CE, MCC-KD and difference cells of study.md on one test set."""
    ce, mcc = row["ce"][split], row["mcc"][split]
    return f"{100 * ce:.1f}% | {100 * mcc:.1f}% | {points(mcc - ce)}"


def change_row(row):
    """One seed's row of the last-change table of study.md."""
    cells = " | ".join(change_cells(row["last_change"][name]) for name in STUDENTS)
    return f"| {row['seed']} | {cells} |"


def plateau_line(study):
    """How many seeds' students levelled off (last two curve evaluations within PLATEAU_POINTS)."""
    n = len(study["seeds"])
    counts = ", ".join(f"{label} {study['levelled_off'][name]} of {n}"
                       for name, (label, _) in STUDENTS.items())
    return (f"Levelled off (the last two curve evaluations within {PLATEAU_POINTS} points, in and out of "
            f"distribution): {counts} seeds. The change from the one to the other, in points:")


def mean_change_line(study):
    """Each student's mean last change over the seeds with its interval, and whether the mean
    curve levelled off."""
    parts = []
    for name, (label, _) in STUDENTS.items():
        changes = study["mean_last_change"][name]
        cells = ", ".join(f"{points(changes[split]['mean'])} [{points(changes[split]['low'])}, "
                          f"{points(changes[split]['high'])}] {SPLITS[split]}" for split in SPLITS)
        level = "levelled off" if levelled_off({split: changes[split]["mean"] for split in SPLITS}) \
            else "still moving"
        parts.append(f"{label} {cells} ({level})")
    return ("The curves averaged over the seeds (study.png, right), last change with its 95% t-interval, "
            "in points: " + "; ".join(parts) + ".")


def study_report(study):
    """study.md."""
    seeds = study["per_seed"]
    rows = [f"| {row['seed']} | " + " | ".join(seed_cells(row, split) for split in SPLITS) + " |"
            for row in seeds]
    return "\n".join([
        f"# mcckd demo: MCC-KD against CE over {len(seeds)} seeds",
        "",
        summary_table(study),
        "",
        f"Mean accuracies over the {len(seeds)} seeds {', '.join(str(s) for s in study['seeds'])}, each "
        f"run for {study['steps']} steps, with {study['test_questions']} questions in each test set. "
        "The difference is paired by seed (the two students of a seed share data, initialisation and "
        "order); its interval is mean -/+ "
        "t(0.975, n-1) * sd / sqrt(n) over the n seeds. An interval that holds 0 shows no difference.",
        "",
        "| seed | CE, in-distr. | MCC-KD, in-distr. | difference | CE, out-of-distr. | MCC-KD, out-of-distr. "
        "| difference |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        plateau_line(study),
        "",
        "| seed | CE, last change in / out | MCC-KD, last change in / out |",
        "| ---: | ---: | ---: |",
        *[change_row(row) for row in seeds],
        "",
        mean_change_line(study),
        "",
        "Each seed's folder `seed-S/` holds its report.md and metrics.json (with the machine it ran on).",
        "",
        "![paired differences](study.png)",
        "",
    ])


def plot_study(out, study):
    """study.png: per test set, each seed's MCC-KD - CE difference with the mean and its interval;
    then each student's accuracy curves averaged over the seeds."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SPLITS) + 1, figsize=(15, 4.2))
    seeds = study["seeds"]
    for axis, (split, label) in zip(axes, SPLITS.items()):
        row, difference = study["splits"][split], study["splits"][split]["mcc_minus_ce"]
        axis.axhspan(100 * difference["low"], 100 * difference["high"], color="tab:orange", alpha=0.2,
                     label="95% t-interval")
        axis.axhline(100 * difference["mean"], color="tab:orange", label="mean")
        axis.axhline(0, color="black", linewidth=0.8)
        axis.plot(range(len(seeds)), [100 * d for d in row["differences"]], "o", color="tab:blue",
                  label="one seed")
        axis.set(title=label, xlabel="seed", xticks=range(len(seeds)), xticklabels=[str(s) for s in seeds],
                 ylabel="MCC-KD - CE accuracy, points")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    plot_mean_curves(axes[-1], study)
    figure.suptitle(f"mcckd demo seed study, {len(seeds)} seeds, {study['steps']} steps")
    figure.tight_layout()
    figure.savefig(out / "study.png", dpi=110)
    plt.close(figure)


def plot_mean_curves(axis, study):
    """Each student's accuracy on both test sets against the step, averaged over the seeds."""
    for (name, (label, _)), color in zip(STUDENTS.items(), ("tab:blue", "tab:orange")):
        curve = study["mean_curves"][name]
        for split, style in (("id", "-"), ("ood", "--")):
            axis.plot(curve["steps"], [100 * value for value in curve[split]], style, color=color, marker="o",
                      label=f"{label}, {SPLITS[split]}")
    axis.set(title=f"accuracy, mean over {len(study['seeds'])} seeds", xlabel="step", ylabel="%",
             ylim=(0, 100))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
