"""Resuming a run: bit-identical weights and metrics after SIGKILL (one process, and two under
torchrun with DDP or FSDP), damaged checkpoints skipped with a line naming the file, a torn
metrics line and leftover folders repaired, --auto-resume for requeue scripts."""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from helpers import assert_same_weights, config_of, metrics, run_command, settings, torchrun, weights

from mcckd import cli
from mcckd.data import read_records
from mcckd.data.stream import MicroBatches
from mcckd.errors import InputError
from mcckd.models.student import load_student
from mcckd.training.checkpoint import checkpoint_path, latest_checkpoint
from mcckd.training.config import load_config
from mcckd.training.loop import train

TIMINGS = ("tokens_per_s", "peak_mem_mb")


def without_timings(log):
    return [{k: v for k, v in line.items() if k not in TIMINGS} for line in log]


def test_sigkill_then_resume_gives_the_same_weights_and_metrics(records_path, tmp_path):
    # log_every does not divide save_every: the first line after the resume averages steps
    # from before and after it
    tree = settings(records_path, tmp_path / "whole", max_steps=24, save_every=4, keep_last=2, warmup_steps=4,
                    log_every=3)
    whole = run_command(["-m", "mcckd", "train", "--config", str(config_of(tree, tmp_path, "whole.yaml"))])
    tree["train"]["out_dir"] = str(tmp_path / "killed")
    killed_config = config_of(tree, tmp_path, "killed.yaml")
    killed = run_command(["-m", "mcckd", "train", "--config", str(killed_config)])
    while not checkpoint_path(tmp_path / "killed", 8).exists() and killed.poll() is None:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read()
    stopped_at = int(latest_checkpoint(tmp_path / "killed").name.removeprefix("step-"))
    assert 8 <= stopped_at < 24
    resumed = run_command(["-m", "mcckd", "train", "--config", str(killed_config), "--resume"])
    assert resumed.wait() == 0, resumed.stderr.read()
    assert whole.wait() == 0, whole.stderr.read()
    final = checkpoint_path(tmp_path / "whole", 24)
    assert_same_weights(weights(final), weights(checkpoint_path(tmp_path / "killed", 24)))
    # the log holds each logged step once, with the values of the run never stopped
    whole_log, killed_log = metrics(tmp_path / "whole"), metrics(tmp_path / "killed")
    assert [m["step"] for m in killed_log] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert without_timings(killed_log) == without_timings(whole_log)


@pytest.fixture(scope="module")
def base_run(records_path, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4, logging every 3 steps."""
    folder = tmp_path_factory.mktemp("base")
    tree = settings(records_path, folder / "run", max_steps=4, save_every=2, keep_last=0, log_every=3)
    config_path = config_of(tree, folder)
    train(load_config(config_path))
    return folder / "run", config_path


def copy_of(base_run, tmp_path):
    """A copy of the base run folder and the config that points at it."""
    run, config_path = base_run
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", load_config(config_path, [f"train.out_dir={tmp_path / 'run'}"])


def truncate(name, keep=0.5):
    def damage(folder):
        path = folder / name
        path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])
    return damage


def remove(name):
    return lambda folder: (folder / name).unlink()


def overwrite(name, start, data):
    """Overwrite bytes of a file from `start` on, its size unchanged."""
    def damage(folder):
        path = folder / name
        content = bytearray(path.read_bytes())
        content[start:start + len(data)] = data
        path.write_bytes(bytes(content))
    return damage


def flip_middle_byte(name):
    def damage(folder):
        path = folder / name
        content = bytearray(path.read_bytes())
        content[len(content) // 2] ^= 0xFF
        path.write_bytes(bytes(content))
    return damage


def empty(folder):
    shutil.rmtree(folder)
    folder.mkdir()


DAMAGES = {
    "truncated model.safetensors": (truncate("model.safetensors"), "model.safetensors is "),
    "empty model.safetensors": (truncate("model.safetensors", 0), "model.safetensors is 0 bytes"),
    "garbled safetensors header": (overwrite("model.safetensors", 8, b"#" * 16),
                                   "model.safetensors: its safetensors header is not valid"),
    "truncated optimizer.pt": (truncate("optimizer.pt"), "optimizer.pt is "),
    "a flipped byte in optimizer.pt": (flip_middle_byte("optimizer.pt"), "optimizer.pt: "),
    "truncated training_state.pt": (truncate("training_state.pt", 0.9), "training_state.pt is "),
    "missing RNG state": (remove("process_state_0.pt"), "process_state_0.pt is missing"),
    "missing config.json": (remove("config.json"), "config.json is missing"),
    "missing tokenizer.json": (remove("tokenizer.json"), "tokenizer.json is missing"),
    "torn manifest.json": (truncate("manifest.json"), "manifest.json is unreadable"),
    "empty step folder": (empty, "no manifest.json"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_skipped_and_kept(base_run, tmp_path, capsys, name):
    damage, reason = DAMAGES[name]
    run, config = copy_of(base_run, tmp_path)
    newest = checkpoint_path(run, 4)
    damage(newest)
    damaged = {p.relative_to(newest): p.read_bytes() for p in newest.rglob("*") if p.is_file()}

    result = train(config, resume=True)

    (line,) = [line for line in capsys.readouterr().err.splitlines() if "skipping checkpoint" in line]
    assert line.startswith(f"mcckd: warning: skipping checkpoint {newest}: {reason}")
    assert result["checkpoint"] == newest
    assert_same_weights(weights(newest), weights(checkpoint_path(base_run[0], 4)))
    assert without_timings(metrics(run)) == without_timings(metrics(base_run[0]))
    kept = newest.with_name("step-000004.damaged")  # set aside when step 4 was saved again
    assert {p.relative_to(kept): p.read_bytes() for p in kept.rglob("*") if p.is_file()} == damaged


def test_no_whole_checkpoint_is_an_error_naming_each(base_run, tmp_path):
    run, config = copy_of(base_run, tmp_path)
    remove("model.safetensors")(checkpoint_path(run, 4))
    truncate("optimizer.pt")(checkpoint_path(run, 2))
    for resume in (True, "auto"):
        with pytest.raises(InputError) as error:
            train(config, resume=resume)
        message = str(error.value)
        assert "no checkpoint in" in message and "step-000004: model.safetensors is missing" in message
        assert "step-000002: optimizer.pt is " in message
    with pytest.raises(InputError, match="already holds checkpoints: pass --resume"):
        train(config)
    assert checkpoint_path(run, 2).is_dir() and checkpoint_path(run, 4).is_dir()


def test_a_torn_metrics_line_and_leftover_folders_are_repaired(base_run, tmp_path):
    """Killed during step 4 (its checkpoint unwritten, its log line torn), and earlier during a
    save and a deletion: the resumed run repairs the log and removes the leftovers."""
    run, config = copy_of(base_run, tmp_path)
    shutil.rmtree(checkpoint_path(run, 4))
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as log:
        log.write('{"step": 5, "loss": 1.2')
    for leftover in (".tmp-step-000004", ".trash-step-000000"):
        (run / "checkpoints" / leftover).mkdir()
        (run / "checkpoints" / leftover / "model.safetensors").write_bytes(b"partial")
    train(config, resume=True)
    assert without_timings(metrics(run)) == without_timings(metrics(base_run[0]))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_auto_resume_starts_fresh_when_there_is_no_checkpoint(base_run, tmp_path, capsys):
    """A requeue script passes --auto-resume every time: with no checkpoint yet (killed before
    the first one was complete) it starts the run afresh; --resume stays strict."""
    run, config = copy_of(base_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints" / ".tmp-step-000002").mkdir(parents=True)
    with pytest.raises(InputError, match="--resume: no checkpoint in .*--auto-resume starts a fresh run"):
        train(config, resume=True)
    config_path = tmp_path / "run.yaml"
    base_config = Path(base_run[1]).read_text().replace(str(base_run[0]), str(run))
    config_path.write_text(base_config)
    assert cli.main(["train", "--config", str(config_path), "--auto-resume"]) == 0
    assert f"final checkpoint: {checkpoint_path(run, 4)}" in capsys.readouterr().out
    assert_same_weights(weights(checkpoint_path(run, 4)), weights(checkpoint_path(base_run[0], 4)))
    assert without_timings(metrics(run)) == without_timings(metrics(base_run[0]))
    assert not (run / "checkpoints" / ".tmp-step-000002").exists()
    # and with a checkpoint, --auto-resume resumes: nothing is left to do at step 4
    assert cli.main(["train", "--config", str(config_path), "--auto-resume"]) == 0
    assert without_timings(metrics(run)) == without_timings(metrics(base_run[0]))


def worker_of_rank(agent_pid, rank):
    """The pid of the torchrun worker of `rank` among the agent's descendants (from /proc)."""
    pending, seen = [agent_pid], []
    while pending:
        pid = pending.pop()
        seen.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            pending += [int(child) for child in (task / "children").read_text().split()]
    for pid in seen[1:]:
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environment:
            return pid
    return None


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_processes_reproduce_one_and_resume_exactly_after_a_rank_is_killed(records_path, tmp_path,
                                                                              distributed):
    """2 gloo processes with 1 micro-batch each = 1 process accumulating 2 (the loss normalised
    over the step's tokens across processes); and a two-process run whose rank 1 is killed
    resumes (--auto-resume) to bit-identical weights and metrics."""
    tree = settings(records_path, tmp_path / "two", max_steps=8, distributed=distributed, warmup_steps=1,
                    save_every=2, keep_last=0, log_every=3)
    two = torchrun(config_of(tree, tmp_path, "two.yaml"))
    tree["train"]["out_dir"] = str(tmp_path / "killed")
    killed_config = config_of(tree, tmp_path, "killed.yaml")
    killed = torchrun(killed_config)
    while not checkpoint_path(tmp_path / "killed", 2).exists() and killed.poll() is None:
        time.sleep(0.01)
    victim = worker_of_rank(killed.pid, 1)
    assert victim is not None and killed.poll() is None, "the run ended before rank 1 could be killed"
    os.kill(victim, signal.SIGKILL)
    assert killed.wait() != 0
    stopped_at = int(latest_checkpoint(tmp_path / "killed").name.removeprefix("step-"))
    assert 2 <= stopped_at < 8

    tree["train"].update(out_dir=str(tmp_path / "one"), grad_accum=2)
    one_config = load_config(config_of(tree, tmp_path, "one.yaml"))
    train(one_config)
    assert two.wait() == 0, two.stderr.read()
    # the two processes' micro-batches of a step hold different numbers of target tokens
    tokenizer = load_student(str(checkpoint_path(tmp_path / "one", 8)), device="cpu").tokenizer
    records = read_records(records_path)
    halves = [MicroBatches(one_config, records, tokenizer, rank=rank, world_size=2).for_step(0)[0]
              for rank in (0, 1)]
    assert int((halves[0].labels != -100).sum()) != int((halves[1].labels != -100).sum())
    one_log, two_log = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for key in ("loss", "ce", "kl", "grad_norm", "lr"):
        assert [m[key] for m in two_log] == pytest.approx([m[key] for m in one_log], rel=1e-5, abs=1e-7)
    final = weights(checkpoint_path(tmp_path / "two", 8))
    assert_same_weights(weights(checkpoint_path(tmp_path / "one", 8)), final, exact=False)

    resumed = torchrun(killed_config, "--auto-resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert_same_weights(final, weights(checkpoint_path(tmp_path / "killed", 8)))
    assert without_timings(metrics(tmp_path / "killed")) == without_timings(two_log)
