"""The demo's CPU threads and the machine it ran on (metrics.json's "environment").

The same seed gives the same numbers only on the same float path: torch's thread count and the
CPU's instruction set change the order of the sums, hence the last bits, hence after hundreds of
steps the results. So the demo records both next to its numbers.
"""
import os
import platform
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

import mcckd
from mcckd.demo.orphans import exit_with_parent

MAX_THREADS = 2  # by default: two students at once, one thread each


STAT_SECONDS = 0.25  # how long free_cores watches the CPUs


def cpu_times(stat_text: str, cpus: set[int]) -> dict[int, tuple[int, int]]:
    """{cpu: (total, idle) jiffies} of the `cpus` listed in a Linux /proc/stat text; iowait
    counts as idle, guest time is already in user time."""
    times = {}
    for line in stat_text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]
            times[int(name[3:])] = (sum(values), values[3] + values[4])
    return times


def busy_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Cores busy between two `cpu_times` samples: the sum over CPUs of 1 - idle share."""
    busy = 0.0
    for cpu in after.keys() & before.keys():
        elapsed = after[cpu][0] - before[cpu][0]
        if elapsed > 0:
            busy += 1.0 - (after[cpu][1] - before[cpu][1]) / elapsed
    return busy


def busy_cores(cpus: set[int], seconds: float = STAT_SECONDS, stat_path: str = "/proc/stat") -> float | None:
    """How many of `cpus` are busy now: /proc/stat read `seconds` apart; None where it cannot be
    read (not Linux) or does not list them."""
    stat = Path(stat_path)
    try:
        before = cpu_times(stat.read_text(encoding="utf-8"), cpus)
        time.sleep(seconds)
        after = cpu_times(stat.read_text(encoding="utf-8"), cpus)
    except (OSError, ValueError, IndexError):
        return None
    return busy_between(before, after) if after else None


def free_cores() -> int:
    """The cores this process may use less those busy now (rounded), at least 1. Busy is
    measured over STAT_SECONDS; without /proc/stat, the 1-minute load average stands in (it
    lags: right after other work it still counts cores that have become free)."""
    try:
        usable = set(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        usable = set(range(os.cpu_count() or 1))
    busy = busy_cores(usable)
    if busy is None:
        busy = os.getloadavg()[0]
    return max(1, len(usable) - round(busy))


def set_threads(threads: int) -> None:
    """Use `threads` intra-op threads and as many inter-op ones (when torch still allows it: the
    inter-op pool can be sized only before its first parallel work)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already started in this process: its size stays
        pass


def thread_plan(threads: int) -> tuple[int, int]:
    """(students trained at once, torch threads each) for `threads` in all: both students at
    once when there are two threads or more (each student's numbers depend only on its own
    threads, so the default plan, 2 x 1 or 1 x 1, gives the same numbers whatever the load)."""
    return (2, threads // 2) if threads >= 2 else (1, threads)


def start_worker(threads: int = 1) -> None:
    """A spawned worker process's set-up: `threads` torch threads, no download progress bars,
    and an end with its parent (`exit_with_parent`)."""
    exit_with_parent(os.getppid())
    set_threads(threads)
    transformers_logging.disable_progress_bar()


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name from Linux's cpuinfo, else what platform knows."""
    try:
        with open(cpuinfo_path, encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(students_at_once: int = 1) -> dict:
    """What the float path of a run depends on, and the versions that produced it; and how
    many students were trained at once, each in its own process with `threads` threads."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "students_at_once": students_at_once,
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ISA torch's kernels use
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "mcckd": mcckd.__version__,
    }
