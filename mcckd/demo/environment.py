"""The demo's CPU threads and the machine it ran on (metrics.json's "environment").

The same seed gives the same numbers only on the same float path: torch's thread count and the
CPU's instruction set change the order of the sums, hence the last bits, hence after hundreds of
steps the results. So the demo records both next to its numbers.
"""
import os
import platform
import sys

import torch

import mcckd

MAX_THREADS = 2  # a 0.8M-parameter student gains nothing from more


def free_cores() -> int:
    """The cores this process may use, less the 1-minute load average (rounded), at least 1."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        usable = os.cpu_count() or 1
    return max(1, usable - round(os.getloadavg()[0]))


def set_threads(threads: int) -> None:
    """Use `threads` intra-op threads and as many inter-op ones (when torch still allows it: the
    inter-op pool can be sized only before its first parallel work)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already started in this process: its size stays
        pass


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


def environment() -> dict:
    """What the float path of a run depends on, and the versions that produced it."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "mcckd": mcckd.__version__,
    }
