"""Writes the rows collected by bench/common.record as the results JSON when the session ends.

On CUDA to bench/results/<gpu-slug>.json, or wherever MCCKD_BENCH_OUT points (also on CPU).
"""
import json
import os
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    if not any(common.RESULTS.values()):
        return
    out = os.environ.get("MCCKD_BENCH_OUT")
    if out is None and not common.ON_CUDA:
        return
    path = Path(out) if out else Path(__file__).parent / "results" / f"{common.device_slug()}.json"
    results = {
        "gpu": common.device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_gbps": common.copy_gbps() if common.ON_CUDA else None,
        **common.RESULTS,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults written to {path}")
