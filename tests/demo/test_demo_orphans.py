"""A worker ends once its parent is killed (`mcckd.demo.orphans`)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = ("import os, time; from mcckd.demo.orphans import exit_with_parent; "
         "exit_with_parent(os.getppid(), 0.05); print('watching', flush=True); time.sleep(120)")
# The parent starts the child, says its pid once the child watches, and waits.
PARENT = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
          "stdout=subprocess.PIPE, text=True); child.stdout.readline(); print(child.pid, flush=True); "
          "time.sleep(120)")


def running(pid):
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux's /proc")
def test_a_worker_ends_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.3)
        assert running(child)  # watching, not yet ended
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_until_gone(child, 10)
    finally:
        parent.kill()
        if running(child):
            os.kill(child, signal.SIGKILL)
