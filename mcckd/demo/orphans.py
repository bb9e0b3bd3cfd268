"""Worker processes that end with their parent.

A killed parent (SIGTERM, SIGKILL, a closed terminal) cannot shut its process pool down, and its
spawned workers would train on, reparented, for minutes. Each worker watches its parent instead.
"""
import os
import threading
import time

WATCH_SECONDS = 1.0  # how often a worker looks for its parent


def exit_with_parent(parent: int, every: float = WATCH_SECONDS) -> threading.Thread:
    """Start a daemon thread that ends this process (exit status 1) once its parent process is
    no longer `parent` (the orphan was reparented); returns the thread."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
