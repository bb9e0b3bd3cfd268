"""pairwise_sym_kl forward and forward+backward, per provider (docs/design.md, "Benchmarks").

`gbps` counts 3 passes over the logits for fwd+bwd (read, read, write: 6 bytes per bf16 logit);
report.py divides it by the copy bandwidth measured in the same run. Timings go end to end
through autograd. `mcckd_graph` (CUDA, G <= 512) replays the same fwd+bwd captured in a CUDA
graph, which takes the launch and host overhead out: the gap between the two rows at small G is
what graph capture of the step would win.
"""
import itertools

import pytest
import torch
from common import DEVICE, DTYPES, FULL_GRID, ON_CUDA, cuda_graphed, measure, median_ms, record
from providers import pairwise_providers

if ON_CUDA:
    # the quoted shapes; K = 2 and 8 with MCCKD_BENCH_FULL=1 (they cost the GPU check's time)
    DEFAULT = [(512, 4, 32000), (512, 4, 128256), (512, 4, 151936), (64, 4, 128256), (4096, 4, 128256)]
    SHAPES = (
        list(itertools.product((64, 512, 4096), (2, 4, 8), (32000, 128256, 151936))) if FULL_GRID else DEFAULT
    )
    DTYPE = "bf16"
    # torch.compile recompiles per shape: only on the headline shape, unless FULL_GRID.
    COMPILE_SHAPES = SHAPES if FULL_GRID else [(512, 4, 128256)]
else:
    SHAPES = COMPILE_SHAPES = [(16, 4, 4096)]
    DTYPE = "fp32"
PROVIDERS = pairwise_providers(ON_CUDA)
GRAPHED = {"mcckd_graph": "mcckd"} if ON_CUDA else {}
MAX_GRAPHED_G = 512


def fwd_bwd(loss_fn, logits):
    return lambda: torch.autograd.grad(loss_fn(logits), logits)


@pytest.mark.parametrize("provider", sorted({**PROVIDERS, **GRAPHED}))
@pytest.mark.parametrize("G, K, V", SHAPES, ids=[f"G{g}-K{k}-V{v}" for g, k, v in SHAPES])
def test_pairwise_sym_kl(benchmark, G, K, V, provider):
    if provider == "torch_compile" and (G, K, V) not in COMPILE_SHAPES:
        pytest.skip("torch.compile is timed on the quoted shapes only (MCCKD_BENCH_FULL=1 for all)")
    if provider in GRAPHED and G > MAX_GRAPHED_G:
        pytest.skip(f"CUDA graphs are for small G (<= {MAX_GRAPHED_G}), where launches cost")
    dtype = DTYPES[DTYPE]
    logits = (2.0 * torch.randn(G, K, V, device=DEVICE)).to(dtype).requires_grad_()
    row = {"G": G, "K": K, "V": V, "dtype": DTYPE, "provider": provider}
    if provider in GRAPHED:
        try:
            forward_backward = cuda_graphed(fwd_bwd(PROVIDERS[GRAPHED[provider]], logits))
        except RuntimeError as error:  # capture refused: the row says why
            record("pairwise_sym_kl", {**row, "ms_fwd_bwd": None, "error": str(error)[:500]})
            raise
        ms_fwd = None
    else:
        forward_backward = fwd_bwd(PROVIDERS[provider], logits)
    ms_fwd_bwd, peak_mb = measure(benchmark, forward_backward)
    if provider not in GRAPHED:
        ms_fwd = median_ms(lambda: PROVIDERS[provider](logits)) if ms_fwd_bwd is not None else None
    bytes_moved = 3 * logits.element_size() * logits.numel()
    record("pairwise_sym_kl", {
        **row, "ms_fwd_bwd": ms_fwd_bwd, "ms_fwd": ms_fwd, "peak_mb": peak_mb,
        "gbps": bytes_moved / (ms_fwd_bwd * 1e-3) / 1e9 if ms_fwd_bwd else None,
    })
