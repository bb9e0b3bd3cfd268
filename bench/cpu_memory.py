"""Peak extra resident memory of one fwd+bwd on the CPU, measured in a fresh process.

tracemalloc sees only Python's allocations, and torch keeps no allocator statistics for CPU
tensors, so this reads the kernel's count: the inputs are made and touched, the process's
peak RSS is reset (`echo 5 > /proc/self/clear_refs`, Linux), the call runs, and the result is
VmHWM minus the RSS before the call. Run it with MALLOC_SETTINGS in the environment: a fixed
mmap threshold makes glibc mmap every large tensor and return it on free (its default raises
the threshold after a free, keeping later tensors in a heap that RSS never gives back), so the
figure is the call's own peak: intermediates, workspaces and the gradients it returns.

    MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 python bench/cpu_memory.py \
        '{"op": "pairwise", "backend": "native", "G": 64, "K": 4, "V": 32000, "dtype": "fp32"}'
    prints {"peak_extra_mb": ...}
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cpu_cases import make_case  # noqa: E402

MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def rss_kb(field):
    """VmRSS or VmHWM of this process, kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mb(fn):
    """Peak RSS above the current one while fn() runs, MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kb("VmRSS")
    fn()
    return (rss_kb("VmHWM") - before) / 1024


if __name__ == "__main__":
    torch.set_num_threads(1)
    spec = json.loads(sys.argv[1])
    fn = make_case(spec)
    fn()  # first call: lazy loading, thread pools, the allocator's first pages
    print(json.dumps({"peak_extra_mb": peak_extra_mb(fn)}))
