"""fused_linear_mcc_loss forward+backward per provider (docs/design.md, "Benchmarks").

Providers: mcckd (ours), torch (materialised logits + F.cross_entropy + reference KL), liger
and cce (their fused linear cross-entropy + our pairwise kernel on the answer rows). The floor
is the three GEMMs, 6 N d V FLOPs (bench/NOTES.md); peak_mb is memory above the inputs.
"""
import pytest
import torch
from common import DTYPES, ON_CUDA, linear_inputs, measure, record
from providers import linear_mcc_providers

if ON_CUDA:
    SHAPES = [(N, 4096, V) for N in (4096, 16384) for V in (32000, 128256, 151936)]
    DTYPE = "bf16"
    G, K = 64, 4
else:
    SHAPES = [(512, 64, 2048)]
    DTYPE = "fp32"
    G, K = 8, 4
PROVIDERS = linear_mcc_providers(ON_CUDA)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("N, d, V", SHAPES, ids=[f"N{n}-d{d}-V{v}" for n, d, v in SHAPES])
def test_fused_linear_mcc(benchmark, N, d, V, provider):
    loss_fn = PROVIDERS[provider]
    hidden, weight, labels, answer_index = linear_inputs(N, d, V, DTYPES[DTYPE], G, K)

    def forward_backward():
        return torch.autograd.grad(loss_fn(hidden, weight, labels, answer_index), (hidden, weight))

    ms_fwd_bwd, peak_mb = measure(benchmark, forward_backward, rounds=3)
    record("fused_linear_mcc", {
        "N": N, "d": d, "V": V, "G": G, "K": K, "dtype": DTYPE, "provider": provider,
        "ms_fwd_bwd": ms_fwd_bwd, "peak_mb": peak_mb,
    })
