"""The native CPU ops against the torch backend on the CPU, fwd+bwd, in the same run
(bench/NOTES.md, "Native CPU ops"): wall and CPU time of interleaved calls, and the peak extra
resident memory of one call in a fresh process (bench/cpu_memory.py says why RSS).

    pairwise_sym_kl        G = 64, K = 4, V = 32000, fp32 and bf16   goal: >= 4x
    fused_linear_mcc_loss  N = 4096, d = 256, V = 32000, fp32         goal: >= 1.5x
    peak memory            fused at N = 16384 (< 524 MB, a quarter of one [N, V] fp32 tensor);
                           pairwise at G = 64 and 128 (growing by the gradient only)

Figures go to bench/results/cpu-<n>vcpu.json (MCCKD_BENCH_OUT elsewhere), merged row by row.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cpu_memory
import pytest
import torch
from cpu_cases import make_case

from mcckd.demo.environment import cpu_model
from mcckd.ops import native_available

HERE = Path(__file__).parent
OUT = Path(os.environ.get("MCCKD_BENCH_OUT", HERE / "results" / f"cpu-{os.cpu_count()}vcpu.json"))
BACKENDS = ("native", "torch")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU benchmarks: run on a CPU machine")


def record(key, row):
    """Merge one result row into the results JSON under `key`."""
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results.setdefault("machine", {"cpus": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__,
                                   "threads": torch.get_num_threads()})
    results[key] = row
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def interleaved_times(fns, rounds):
    """{name: (median wall ms, median CPU ms)} of calls alternating between fns, after one warm-up
    call each; CPU time is the process's (all threads)."""
    for fn in fns.values():
        fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - start_wall) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def peak_extra_mb(spec):
    """bench/cpu_memory.py on spec, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           **cpu_memory.MALLOC_SETTINGS}
    command = [sys.executable, str(HERE / "cpu_memory.py"), json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])["peak_extra_mb"]


def compare(benchmark, key, spec, rounds):
    """Time native and torch on spec, record both and their ratios; pytest-benchmark times native."""
    assert native_available(), "build the native CPU ops first (pip install -e .)"
    fns = {backend: make_case({**spec, "backend": backend}) for backend in BACKENDS}
    times = interleaved_times(fns, rounds)
    row = {**spec, "rounds": rounds,
           **{f"{backend}_ms": round(times[backend][0], 2) for backend in BACKENDS},
           **{f"{backend}_cpu_ms": round(times[backend][1], 2) for backend in BACKENDS},
           "speedup_wall": round(times["torch"][0] / times["native"][0], 2),
           "speedup_cpu": round(times["torch"][1] / times["native"][1], 2)}
    record(key, row)
    benchmark.extra_info.update(row)
    benchmark.pedantic(fns["native"], rounds=1, iterations=1)
    return row


@pytest.mark.parametrize("dtype", ("fp32", "bf16"))
def test_pairwise_sym_kl(benchmark, dtype):
    compare(benchmark, f"pairwise_sym_kl-G64-K4-V32000-{dtype}",
            dict(op="pairwise", G=64, K=4, V=32000, dtype=dtype), rounds=7)


def test_fused_linear_mcc(benchmark):
    compare(benchmark, "fused_linear_mcc-N4096-d256-V32000-fp32",
            dict(op="fused", N=4096, d=256, V=32000, G=64, K=4, dtype="fp32"), rounds=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_peak_memory(backend):
    spec = dict(op="fused", backend=backend, N=16384, d=256, V=32000, G=64, K=4, dtype="fp32")
    peak = peak_extra_mb(spec)
    one_logits_mb = 16384 * 32000 * 4 / 2**20
    record(f"fused_linear_mcc-N16384-d256-V32000-fp32-{backend}-memory",
           {**spec, "peak_extra_mb": round(peak, 1), "quarter_of_logits_mb": round(one_logits_mb / 4, 1)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_peak_memory_grows_by_the_gradient(backend):
    peaks = {G: peak_extra_mb(dict(op="pairwise", backend=backend, G=G, K=4, V=32000, dtype="fp32"))
             for G in (64, 128)}
    gradient_mb = {G: G * 4 * 32000 * 4 / 2**20 for G in peaks}
    record(f"pairwise_sym_kl-K4-V32000-fp32-{backend}-memory",
           {"peak_extra_mb": {G: round(p, 1) for G, p in peaks.items()},
            "gradient_mb": {G: round(m, 1) for G, m in gradient_mb.items()}})
