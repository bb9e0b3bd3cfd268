"""Benchmark protocol shared by bench/: timing, memory, results JSON (docs/design.md, "Benchmarks").

On CUDA every figure comes from CUDA events (`triton.testing.do_bench`, median) and every
provider is timed in the same process, so ratios compare like with like. On the CPU the
benchmarks run at small shapes so that `pytest bench/ --benchmark-only` works anywhere.
Rows collected with `record` are written as JSON at the end of the session (see conftest.py).
"""
import os
import re
import statistics
import time

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
# MCCKD_BENCH_FULL=1: the whole grid of docs/design.md instead of the default subset.
FULL_GRID = os.environ.get("MCCKD_BENCH_FULL") == "1"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

RESULTS = {"pairwise_sym_kl": [], "fused_linear_mcc": []}


def record(section, row):
    """Add one result row to `section` of the results JSON."""
    RESULTS[section].append(row)


def device_name():
    return torch.cuda.get_device_name() if ON_CUDA else "cpu"


def device_slug():
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name().lower()).strip("-")


def median_ms(fn, warmup_ms=25, rep_ms=100):
    """Median wall time of fn() in milliseconds: CUDA events on a GPU, perf_counter on CPU."""
    if ON_CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    fn()
    times = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_extra_mb(fn):
    """Peak CUDA memory allocated by fn() above what was allocated before it, in MiB (None on CPU)."""
    if not ON_CUDA:
        fn()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def copy_gbps(nbytes=2**30):
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def synchronized(fn):
    """fn followed by a device synchronisation, so host timers see the work finish."""
    def run():
        out = fn()
        if ON_CUDA:
            torch.cuda.synchronize()
        return out
    return run


def linear_inputs(N, d, V, dtype, G, K, ignored=0.25):
    """hidden [N, d] and weight [V, d] (logits of std ~1) requiring grad, labels [N] with a
    fraction `ignored` at -100 (prompt tokens carry no target), answer_index [G, K]."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(N, d, generator=gen, device=DEVICE, dtype=dtype).requires_grad_()
    weight = torch.randn(V, d, generator=gen, device=DEVICE, dtype=dtype).mul_(d**-0.5).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=gen, device=DEVICE)
    labels[torch.rand(N, generator=gen, device=DEVICE) < ignored] = -100
    answer_index = torch.randperm(N, generator=gen, device=DEVICE)[: G * K].view(G, K)
    return hidden, weight, labels, answer_index


def cuda_graphed(fn, warmup=3):
    """fn() captured once in a CUDA graph (after warm-up calls on a side stream, as capture
    needs); returns the graph's replay, which costs the kernels without their launches."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure(benchmark, fn, rounds=5):
    """Time fn with pytest-benchmark (its table) and return (median ms, peak extra MiB).

    Out-of-memory is returned as (None, None) so one provider's failure does not hide the rest.
    """
    try:
        peak = peak_extra_mb(fn)
        ms = median_ms(fn)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, None
    benchmark.extra_info.update(median_ms=ms, peak_mb=peak)
    benchmark.pedantic(synchronized(fn), rounds=rounds, warmup_rounds=1, iterations=1)
    return ms, peak
