"""`mcckd demo --seeds` refuses what it cannot resume: a folder holding other files, a finished
seed run with other settings, bad seed lists; each is one error line, before any training. And
the study's record of whether each student levelled off."""
import json

import pytest

from mcckd import cli
from mcckd.demo import command, report, settings, study

SMALL = settings.Sizes(train=48, test=12, curve=4, teacher_samples=8)


def refused(argv, capsys):
    """The one `mcckd: error:` line of a refused command (exit code 2)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(command, "SIZES", SMALL)
        assert cli.main(["demo", *argv, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_folder_with_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    line = refused(["--out", str(tmp_path), "--seeds", "0-1"], capsys)
    assert f"{tmp_path} holds files that are not a seed study's (notes.txt)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(("steps", "test_questions"), [(5, SMALL.test), (2, SMALL.test + 1)])
def test_a_seed_finished_with_other_settings_is_refused(tmp_path, capsys, steps, test_questions):
    (tmp_path / "seed-0").mkdir()
    metrics = {"steps": steps, "task": {"test_questions": test_questions}}
    (tmp_path / "seed-0" / "metrics.json").write_text(json.dumps(metrics))
    line = refused(["--out", str(tmp_path), "--seeds", "0-1", "--steps", "2"], capsys)
    assert f"seed-0/metrics.json was run with --steps {steps} and {test_questions} test questions" in line
    assert not (tmp_path / "seed-1").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "0-40"], "argument --seeds: expected 2 to 31 seeds, got 41"),
    (["--seeds", "x"], "argument --seeds: expected seeds like 0-7 or 0,3,5, got 'x'"),
    (["--seed", "1", "--seeds", "0-1"], "argument --seeds: not allowed with argument --seed"),
    (["--threads", "0"], "argument --threads: expected an integer >= 1, got 0"),
    (["--workers", "0", "--seeds", "0-1"], "argument --workers: expected an integer >= 1, got 0"),
])
def test_bad_arguments_are_refused(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["demo", "--out", str(tmp_path / "out"), *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--workers", "2"], "--workers runs several seeds at once: pass --seeds too"),
    (["--workers", "2", "--seeds", "0-1", "--threads", "2"], "--workers runs each seed with one thread"),
])
def test_workers_without_seeds_or_with_threads_are_refused(tmp_path, capsys, argv, message):
    assert cli.main(["demo", "--out", str(tmp_path / "out"), *argv]) == 2
    assert f"mcckd: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def write_run_log(folder, name, evaluations):
    """A run's metrics.jsonl with a training entry and (step, id, ood) evaluations."""
    run = folder / "runs" / name
    run.mkdir(parents=True)
    lines = [json.dumps({"step": 1, "loss": 1.0, "ce": 1.0, "kl": 0.0})]
    lines += [json.dumps({"step": s, "eval_id_accuracy": i, "eval_ood_accuracy": o})
              for s, i, o in evaluations]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_last_changes_are_read_from_the_runs_logs(tmp_path):
    write_run_log(tmp_path, "ce", [(10, 0.2, 0.1), (20, 0.80, 0.30), (30, 0.81, 0.27)])
    write_run_log(tmp_path, "mcc", [(10, 0.3, 0.1), (20, 0.70, 0.20), (30, 0.75, 0.21)])
    changes = report.last_changes(tmp_path)
    assert changes["ce"] == {"id": pytest.approx(0.01), "ood": pytest.approx(-0.03)}
    assert changes["mcc"] == {"id": pytest.approx(0.05), "ood": pytest.approx(0.01)}
    assert not report.levelled_off(changes["ce"])  # out of distribution -3 points
    assert not report.levelled_off(changes["mcc"])
    assert report.levelled_off({"id": -0.02, "ood": 0.0133})


def test_the_levelled_line_names_each_students_verdict_and_changes():
    metrics = {"last_change": {"ce": {"id": 0.01, "ood": -0.03}, "mcc": {"id": -0.0004, "ood": 0.02}}}
    assert report.levelled_line(metrics) == (
        "Levelled off (the last two curve evaluations within 2 points in and out of distribution; the "
        "changes in points): CE only no (+1.0 / -3.0), MCC-KD yes (+0.0 / +2.0).")


def test_a_run_with_one_evaluation_has_no_change(tmp_path):
    write_run_log(tmp_path, "ce", [(10, 0.4, 0.2)])
    write_run_log(tmp_path, "mcc", [(10, 0.5, 0.1)])
    assert report.last_changes(tmp_path) == {"ce": {"id": 0.0, "ood": 0.0}, "mcc": {"id": 0.0, "ood": 0.0}}


def test_mean_curves_average_the_seeds_at_the_steps_they_share(tmp_path):
    first, second = tmp_path / "seed-0", tmp_path / "seed-1"
    write_run_log(first, "ce", [(10, 0.2, 0.1), (20, 0.8, 0.3)])
    write_run_log(first, "mcc", [(10, 0.3, 0.1), (20, 0.7, 0.2)])
    write_run_log(second, "ce", [(10, 0.4, 0.3), (20, 0.6, 0.5), (30, 0.9, 0.9)])
    write_run_log(second, "mcc", [(10, 0.5, 0.1), (20, 0.9, 0.4)])
    curves = study.mean_curves([first, second])
    assert curves["ce"] == {"steps": [10, 20], "id": [pytest.approx(0.3), pytest.approx(0.7)],
                            "ood": [pytest.approx(0.2), pytest.approx(0.4)]}
    assert curves["mcc"] == {"steps": [10, 20], "id": [pytest.approx(0.4), pytest.approx(0.8)],
                             "ood": [pytest.approx(0.1), pytest.approx(0.3)]}


@pytest.mark.parametrize(("fraction", "text"),
                         [(0.0314, "+3.1"), (-0.05, "-5.0"), (-0.0004, "+0.0"), (0.0, "+0.0")])
def test_points_are_signed_and_never_minus_zero(fraction, text):
    assert report.points(fraction) == text
