"""`mcckd demo`, fast variant (small data, two steps): every artefact is written, the two students
differ only in alpha, `mcckd eval` on a saved checkpoint reproduces the demo's numbers, a second run
gives the same numbers, and a seed study resumes from a finished seed."""
import contextlib
import io
import json
import re
import shutil
from dataclasses import replace

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from mcckd.cli import main
from mcckd.data import extract_answer, read_records
from mcckd.demo import command, runner, settings
from mcckd.demo.intervals import mean_interval
from mcckd.demo.report import difference_line, levelled_line, levelled_off, read_log, results_table
from mcckd.demo.study import summary_table

SMALL = settings.Sizes(train=48, test=12, curve=12, teacher_samples=8)
STEPS, SEED = 2, 3
TIMINGS = ("seconds", "train_seconds")
RESULTS = ("id_acc", "ood_acc", "id_correct", "ood_correct", "final_loss")


def small_demo(*arguments, threads=1, sizes=SMALL):
    """What `mcckd demo ... --steps STEPS --threads THREADS` printed, with the small sizes."""
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(command, "SIZES", sizes)
        assert main(["demo", *arguments, "--steps", str(STEPS), "--threads", str(threads)]) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(out folder, metrics.json, what the command printed) of one small demo run."""
    out = tmp_path_factory.mktemp("demo") / "out"
    printed = small_demo("--out", str(out), "--seed", str(SEED))
    return out, json.loads((out / "metrics.json").read_text()), printed


def without_timings(tree):
    """metrics.json less its wall-clock times."""
    if isinstance(tree, dict):
        return {key: without_timings(value) for key, value in tree.items() if key not in TIMINGS}
    return tree


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_artefact_is_written(finished):
    out, metrics, printed = finished
    for name in ("teacher.jsonl", "train.jsonl", "test_id.jsonl", "test_ood.jsonl", "prepare.txt"):
        assert (out / "data" / name).stat().st_size > 0
    for name in settings.STUDENTS:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in (out / name).iterdir()
        }
        for split in settings.SPLITS:
            assert len(jsonl(out / "eval" / f"{name}-{split}" / "predictions.jsonl")) == SMALL.test
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = results_table(metrics)
    assert table in (out / "report.md").read_text() and table in printed
    assert difference_line(metrics) in printed


def test_metrics_hold_both_students_on_both_test_sets(finished):
    out, metrics, _ = finished
    assert metrics["seed"] == SEED and metrics["steps"] == STEPS
    assert (
        metrics["ce"]["alpha"] == 0
        and metrics["mcc"]["alpha"] == settings.MCC_ALPHA > 0
        and metrics["mcc"]["k"] >= 3
    )
    for name in settings.STUDENTS:
        student = metrics[name]
        for split in settings.SPLITS:
            summary = json.loads((out / "eval" / f"{name}-{split}" / "summary.json").read_text())
            assert student[f"{split}_n"] == SMALL.test == summary["n"]
            assert student[f"{split}_acc"] == summary["accuracy"] == student[f"{split}_correct"] / SMALL.test
    assert metrics["mcc_minus_ce"]["id_acc"] == metrics["mcc"]["id_acc"] - metrics["ce"]["id_acc"]
    assert metrics["task"]["train_questions"] == len(read_records(out / "data" / "train.jsonl"))


def test_each_students_last_change_is_recorded_and_reported(finished):
    out, metrics, printed = finished
    for name in settings.STUDENTS:
        _, evaluations = read_log(out, name)
        previous, last = evaluations[-2:]
        assert (previous["step"], last["step"]) == (STEPS - 1, STEPS)
        change = {split: last[f"eval_{split}_accuracy"] - previous[f"eval_{split}_accuracy"]
                  for split in settings.SPLITS}
        assert metrics["last_change"][name] == change
    line = levelled_line(metrics)
    assert line in printed and line in (out / "report.md").read_text()


def test_the_students_read_every_number_as_one_token(finished):
    out, _, _ = finished
    tokenizer = AutoTokenizer.from_pretrained(out / "mcc")
    assert (out / "mcc" / "tokenizer.json").read_text() == (out / "tokenizer" / "tokenizer.json").read_text()
    numbers = {int(n) for record in read_records(out / "data" / "train.jsonl")
               for text in (record.question, *record.rationales) for n in re.findall(r"\d+", text)}
    assert len(numbers) > 10
    assert all(len(tokenizer(f" {n}", add_special_tokens=False)["input_ids"]) == 1 for n in numbers)


def test_the_data_went_through_prepare(finished):
    out, metrics, _ = finished
    teacher = read_records(out / "data" / "teacher.jsonl")
    train = read_records(out / "data" / "train.jsonl")
    assert len(teacher) == SMALL.train and all(len(r.rationales) == SMALL.teacher_samples for r in teacher)
    assert metrics["task"]["rationales_dropped"]["wrong answer"] > 0
    for record in train:
        assert 2 <= len(record.rationales) <= settings.K
        assert all(extract_answer(text, record.task) == record.answer for text in record.rationales)
    test_id, test_ood = (read_records(out / "data" / f"test_{split}.jsonl") for split in settings.SPLITS)
    questions = {r.question for r in teacher}
    assert not questions & {r.question for r in test_id} and not questions & {r.question for r in test_ood}


def test_the_students_differ_only_in_alpha(finished):
    out, _, _ = finished
    configs = {
        name: yaml.safe_load((out / "runs" / name / "config.yaml").read_text()) for name in settings.STUDENTS
    }
    for config in configs.values():
        del config["train"]["out_dir"]
    assert (
        configs["ce"]["train"].pop("alpha") == 0
        and configs["mcc"]["train"].pop("alpha") == settings.MCC_ALPHA
    )
    assert configs["ce"] == configs["mcc"]
    for name, alpha in (("ce", 0.0), ("mcc", settings.MCC_ALPHA)):
        logged = jsonl(out / "runs" / name / "metrics.jsonl")
        losses = [m for m in logged if "loss" in m]
        assert losses and all(m["loss"] == pytest.approx(m["ce"] + alpha * m["kl"], rel=1e-6) for m in losses)
        curve = [m for m in logged if "eval_id_accuracy" in m]
        assert [m["step"] for m in curve] == list(range(1, STEPS + 1))
        assert all(0 <= m["eval_ood_accuracy"] <= 1 for m in curve)


def test_mcckd_eval_reproduces_the_demo_accuracy(finished, tmp_path):
    out, metrics, _ = finished
    ev = metrics["eval"]
    again = tmp_path / "again"
    assert main(["eval", "--model", str(out / "mcc"), "--data", str(out / "data" / "test_id.jsonl"),
                 "--task", ev["task"], "--batch-size", str(ev["batch_size"]),
                 "--max-new-tokens", str(ev["max_new_tokens"]), "--out", str(again)]) == 0
    assert json.loads((again / "summary.json").read_text())["accuracy"] == metrics["mcc"]["id_acc"]
    # the same greedy outputs, word for word: a far stronger check than an accuracy near zero
    generated = [row["generated"] for row in jsonl(again / "predictions.jsonl")]
    assert generated == [row["generated"] for row in jsonl(out / "eval" / "mcc-id" / "predictions.jsonl")]


def test_a_curve_on_part_of_the_test_sets_is_followed_by_an_evaluation_of_all(finished, tmp_path):
    out, metrics, _ = finished  # its curve's last evaluation, after the last step, took every question
    part = tmp_path / "part"
    small_demo("--out", str(part), "--seed", str(SEED), sizes=replace(SMALL, curve=4))
    again = json.loads((part / "metrics.json").read_text())
    assert again["task"]["curve_questions"] == 4
    for name in settings.STUDENTS:
        assert [again[name][f"{split}_n"] for split in settings.SPLITS] == [SMALL.test] * 2
        assert {key: again[name][key] for key in RESULTS} == {key: metrics[name][key] for key in RESULTS}
        for split in settings.SPLITS:
            rows = jsonl(part / "eval" / f"{name}-{split}" / "predictions.jsonl")
            assert rows == jsonl(out / "eval" / f"{name}-{split}" / "predictions.jsonl")


def test_the_evaluation_after_the_last_step_is_not_repeated(tmp_path, monkeypatch):
    questions = []
    answer = runner.predict
    monkeypatch.setattr(runner, "predict", lambda *args, **kwargs: questions.append(len(args[2]))
                        or answer(*args, **kwargs))
    small_demo("--out", str(tmp_path / "out"), "--seed", str(SEED))
    # each student: an evaluation of both test sets after every step (curve_every(2) = 1), no more
    assert questions == [SMALL.test] * (len(settings.STUDENTS) * STEPS * len(settings.SPLITS))


def test_a_folder_in_use_is_refused(finished, capsys):
    out, _, _ = finished
    assert main(["demo", "--out", str(out), "--steps", "1"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_the_environment_is_recorded(finished):
    _, metrics, printed = finished
    environment = metrics["environment"]
    assert printed.startswith("torch threads: 1 (--threads): one student at a time, 1 thread each\n")
    assert environment["threads"] == 1 and environment["torch"] == torch.__version__
    assert environment["students_at_once"] == 1
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(environment) == {"torch", "threads", "interop_threads", "students_at_once", "cpu",
                                "cpu_capability", "platform", "python", "mcckd"}


def test_a_second_run_gives_the_same_numbers(finished, tmp_path):
    _, metrics, _ = finished
    small_demo("--out", str(tmp_path / "again"), "--seed", str(SEED))
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for name in settings.STUDENTS:
        assert again[name]["final_loss"] == metrics[name]["final_loss"]
        assert again[name]["final_kl"] == metrics[name]["final_kl"]
        assert again[name]["id_acc"] == metrics[name]["id_acc"]
    assert without_timings(again) == without_timings(metrics)


def test_both_students_at_once_give_the_numbers_of_one_after_the_other(finished, tmp_path):
    _, metrics, _ = finished
    printed = small_demo("--out", str(tmp_path / "at-once"), "--seed", str(SEED), threads=2)
    assert printed.startswith("torch threads: 2 (--threads): both students at once, 1 thread each\n")
    at_once = json.loads((tmp_path / "at-once" / "metrics.json").read_text())
    assert at_once["environment"] == {**metrics["environment"], "students_at_once": 2}
    assert without_timings(at_once) == without_timings({**metrics, "environment": at_once["environment"]})
    for name in settings.STUDENTS:
        assert "micro-batches an epoch" in (tmp_path / "at-once" / "runs" / f"{name}.log").read_text()


def test_a_seed_study_keeps_a_finished_seed_and_pairs_the_students(finished, tmp_path):
    out, first, _ = finished
    study_dir = tmp_path / "study"
    shutil.copytree(out, study_dir / f"seed-{SEED}")
    kept = (study_dir / f"seed-{SEED}" / "metrics.json").stat().st_mtime_ns
    (study_dir / f"seed-{SEED + 1}").mkdir()  # a run stopped part-way: started again
    (study_dir / f"seed-{SEED + 1}" / "teacher.jsonl").write_text("")
    printed = small_demo("--out", str(study_dir), "--seeds", f"{SEED}-{SEED + 1}")
    assert (study_dir / f"seed-{SEED}" / "metrics.json").stat().st_mtime_ns == kept
    second = json.loads((study_dir / f"seed-{SEED + 1}" / "metrics.json").read_text())
    assert second["seed"] == SEED + 1 and second["steps"] == STEPS
    assert not (study_dir / f"seed-{SEED + 1}" / "teacher.jsonl").exists()
    study = json.loads((study_dir / "study.json").read_text())
    assert study["seeds"] == [SEED, SEED + 1]
    for split in settings.SPLITS:
        differences = [m["mcc"][f"{split}_acc"] - m["ce"][f"{split}_acc"] for m in (first, second)]
        assert study["splits"][split]["differences"] == differences
        assert study["splits"][split]["mcc_minus_ce"] == mean_interval(differences)
        ce = [m["ce"][f"{split}_acc"] for m in (first, second)]
        assert study["splits"][split]["ce_mean"] == sum(ce) / 2
    for row, folder in zip(study["per_seed"], (study_dir / f"seed-{SEED}", study_dir / f"seed-{SEED + 1}")):
        _, evaluations = read_log(folder, "mcc")
        want = evaluations[-1]["eval_ood_accuracy"] - evaluations[-2]["eval_ood_accuracy"]
        assert row["last_change"]["mcc"]["ood"] == want
    rows = study["per_seed"]
    assert study["levelled_off"] == {name: sum(levelled_off(row["last_change"][name]) for row in rows)
                                     for name in settings.STUDENTS}
    for name in settings.STUDENTS:
        curve = study["mean_curves"][name]
        assert curve["steps"] == list(range(1, STEPS + 1))
        runs = [read_log(study_dir / f"seed-{seed}", name)[1] for seed in (SEED, SEED + 1)]
        for split in settings.SPLITS:
            assert curve[split] == [pytest.approx(sum(run[i][f"eval_{split}_accuracy"] for run in runs) / 2)
                                    for i in range(STEPS)]
            changes = [row["last_change"][name][split] for row in rows]
            assert study["mean_last_change"][name][split] == mean_interval(changes)
    table = summary_table(study)
    assert table in printed and table in (study_dir / "study.md").read_text()
    report = (study_dir / "study.md").read_text()
    assert "Levelled off (the last two curve evaluations within 2 points" in report
    assert "The curves averaged over the seeds (study.png, right)" in report
    assert (study_dir / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    small_demo("--out", str(study_dir), "--seeds", f"{SEED}-{SEED + 1}")  # resumed: both seeds kept
    assert json.loads((study_dir / f"seed-{SEED + 1}" / "metrics.json").read_text()) == second


def test_seeds_in_worker_processes_give_the_single_run_numbers(finished, tmp_path):
    _, first, _ = finished
    study_dir = tmp_path / "study"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(command, "SIZES", SMALL)
        assert main(["demo", "--out", str(study_dir), "--steps", str(STEPS), "--seeds", f"{SEED}-{SEED + 1}",
                     "--workers", "2"]) == 0
    assert printed.getvalue().startswith("torch threads: 1 in each of 2 worker processes (--workers), "
                                         "one student at a time in each\n")
    again = json.loads((study_dir / f"seed-{SEED}" / "metrics.json").read_text())
    assert again["environment"]["threads"] == 1
    del again["environment"]
    assert without_timings(again) == without_timings({k: v for k, v in first.items() if k != "environment"})
    assert "micro-batches an epoch" in (study_dir / f"seed-{SEED + 1}.log").read_text()
    assert json.loads((study_dir / "study.json").read_text())["seeds"] == [SEED, SEED + 1]
