"""Writes the rows collected by bench/common.record as the results JSON, after every test and
at the end of the session, so that a run stopped at its time limit keeps what it measured.

On CUDA to bench/results/<gpu-slug>.json, or wherever MCCKD_BENCH_OUT points (also on CPU).
"""
import functools
import json
import os
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402


@functools.cache
def copy_gbps():
    """The device-to-device copy bandwidth of this run, measured once."""
    return common.copy_gbps() if common.ON_CUDA else None


def write_results():
    if not any(common.RESULTS.values()):
        return None
    out = os.environ.get("MCCKD_BENCH_OUT")
    if out is None and not common.ON_CUDA:
        return None
    path = Path(out) if out else Path(__file__).parent / "results" / f"{common.device_slug()}.json"
    results = {
        "gpu": common.device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_gbps": copy_gbps(),
        **common.RESULTS,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def pytest_runtest_logfinish(nodeid, location):
    write_results()


def pytest_sessionfinish(session, exitstatus):
    path = write_results()
    if path is not None:
        print(f"\nresults written to {path}")
