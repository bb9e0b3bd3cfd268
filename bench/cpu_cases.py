"""The CPU benchmark cases as zero-argument fwd+bwd callables (bench/test_bench_cpu.py and
bench/cpu_memory.py): a spec {"op", "backend", shape, "dtype"} -> fn()."""
import torch

from mcckd.ops import fused_linear_mcc_loss, pairwise_sym_kl

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ALPHA = 0.1  # the consistency weight (the paper's)


def pairwise_case(backend, G, K, V, dtype):
    """fwd+bwd of pairwise_sym_kl on logits [G, K, V] of std 3, 10% of the rows masked."""
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(G, K, V, generator=generator)).to(DTYPES[dtype]).requires_grad_()
    valid = torch.rand(G, K, generator=generator) > 0.1

    def run():
        return torch.autograd.grad(pairwise_sym_kl(logits, valid, backend=backend), logits)

    return run


def fused_case(backend, N, d, V, G, K, dtype, ignored=0.25):
    """fwd+bwd of fused_linear_mcc_loss (alpha 0.1): hidden [N, d], lm_head [V, d] giving logits
    of std ~1, 25% of targets ignored (prompt tokens), answer rows [G, K] at distinct positions."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, d, generator=generator).to(DTYPES[dtype]).requires_grad_()
    weight = (torch.randn(V, d, generator=generator) * d**-0.5).to(DTYPES[dtype]).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=generator)
    labels[torch.rand(N, generator=generator) < ignored] = -100
    answer_index = torch.randperm(N, generator=generator)[: G * K].view(G, K)

    def run():
        out = fused_linear_mcc_loss(hidden, weight, labels, answer_index, alpha=ALPHA, backend=backend)
        return torch.autograd.grad(out.loss, (hidden, weight))

    return run


def make_case(spec):
    spec = dict(spec)
    op = spec.pop("op")
    return pairwise_case(**spec) if op == "pairwise" else fused_case(**spec)
