"""The demo's thread choice and the machine record of metrics.json."""
import os
import platform
import sys

import pytest
import torch

import mcckd
from mcckd.demo import command, environment


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("cores", "busy", "free"), [(2, 0.0, 2), (2, 1.4, 1), (2, 2.0, 1), (16, 3.2, 13)])
def test_free_cores_are_the_usable_ones_less_the_busy_ones(monkeypatch, cores, busy, free):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(environment, "busy_cores", lambda cpus: busy if cpus == set(range(cores)) else None)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))  # not used when /proc/stat is read
    assert environment.free_cores() == free


def test_without_proc_stat_the_load_average_stands_in(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(environment, "busy_cores", lambda cpus: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.4, 0.0, 0.0))
    assert environment.free_cores() == 3


STAT_BEFORE = """cpu  300 0 100 900 0 0 0 0 0 0
cpu0 100 0 50 400 0 0 0 0 0 0
cpu1 200 0 50 500 0 0 0 0 0 0
cpu2 0 0 0 0 0 0 0 0 0 0
intr 12345
"""
# over the interval: cpu0 all busy (100 jiffies), cpu1 a quarter busy (25 of 100, 10 of the
# idle ones waiting on I/O), cpu2 not counted (not ours)
STAT_AFTER = """cpu  425 0 100 975 10 0 0 0 0 0
cpu0 180 0 70 400 0 0 0 0 0 0
cpu1 220 0 55 565 10 0 0 0 0 0
cpu2 900 0 0 0 0 0 0 0 0 0
intr 12399
"""


def test_busy_cores_are_read_from_proc_stat():
    before, after = (environment.cpu_times(text, {0, 1}) for text in (STAT_BEFORE, STAT_AFTER))
    assert before == {0: (550, 400), 1: (750, 500)}
    assert environment.busy_between(before, after) == pytest.approx(1.25)


def test_busy_cores_sample_this_machine():
    busy = environment.busy_cores(set(os.sched_getaffinity(0)), seconds=0.05)
    assert busy is None or 0.0 <= busy <= len(os.sched_getaffinity(0)) + 1e-9


def test_an_unreadable_proc_stat_gives_none(tmp_path):
    assert environment.busy_cores({0}, seconds=0.0, stat_path=str(tmp_path / "missing")) is None


@pytest.mark.parametrize(("cores", "busy", "threads", "plan"), [
    (2, 0.0, 2, (2, "both students at once")), (2, 1.2, 1, (1, "one student at a time")),
    (16, 0.0, 2, (2, "both students at once"))])
def test_the_default_takes_the_free_cores_up_to_two(monkeypatch, restore_threads, cores, busy, threads, plan):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(environment, "busy_cores", lambda cpus: busy)
    at_once, words = plan
    free = cores - round(busy)
    assert command.choose_threads(None) == (
        at_once, f"torch threads: {threads} ({free} free cores, at most 2): {words}, 1 thread each")
    assert torch.get_num_threads() == 1  # each student's: the same numbers whatever the load


@pytest.mark.parametrize(("threads", "plan"),
                         [(1, (1, 1)), (2, (2, 1)), (3, (2, 1)), (4, (2, 2)), (9, (2, 4))])
def test_two_threads_or_more_train_both_students_at_once(threads, plan):
    assert environment.thread_plan(threads) == plan


def test_threads_asked_for_are_used(restore_threads):
    line = "torch threads: 4 (--threads): both students at once, 2 threads each"
    assert command.choose_threads(4) == (2, line)
    assert torch.get_num_threads() == 2 and environment.environment(2)["threads"] == 2
    assert environment.environment(2)["students_at_once"] == 2


def test_the_environment_names_the_float_path_and_the_versions():
    record = environment.environment()
    assert record["torch"] == torch.__version__ and record["mcckd"] == mcckd.__version__
    assert record["threads"] == torch.get_num_threads() >= 1
    assert record["python"] == platform.python_version() and record["python"].startswith(
        f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert record["platform"] == platform.platform() and record["cpu"]


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Made Up\nmodel name\t: Made Up CPU 9000 @ 3.0GHz\n")
    assert environment.cpu_model(str(cpuinfo)) == "Made Up CPU 9000 @ 3.0GHz"
    assert environment.cpu_model(str(tmp_path / "absent")) == (platform.processor() or platform.machine())
