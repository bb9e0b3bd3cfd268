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


@pytest.mark.parametrize(("cores", "load", "free"), [(2, 0.0, 2), (2, 1.4, 1), (2, 5.0, 1), (16, 3.2, 13)])
def test_free_cores_are_the_usable_ones_less_the_load(monkeypatch, cores, load, free):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert environment.free_cores() == free


@pytest.mark.parametrize(("cores", "load", "threads", "plan"), [
    (2, 0.0, 2, (2, "both students at once")), (2, 1.2, 1, (1, "one student at a time")),
    (16, 0.0, 2, (2, "both students at once"))])
def test_the_default_takes_the_free_cores_up_to_two(monkeypatch, restore_threads, cores, load, threads, plan):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    at_once, words = plan
    free = cores - round(load)
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
