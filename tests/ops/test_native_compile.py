"""torch.compile(fullgraph=True) of both ops with backend="native": one graph whose mcckd nodes
are the native ops (their C++ Meta kernels are the fakes), forward and backward equal to eager."""
import pytest
import torch
from helpers import FUSED_COEFS, random_logits
from torch._dynamo.backends.registry import lookup_backend

from mcckd.ops import fused_linear_mcc_loss, pairwise_sym_kl


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(fn, backend):
    """(torch.compile(fn, fullgraph=True, backend), names of the mcckd ops in its graphs)."""
    names, inner = [], lookup_backend(backend)

    def recording(gm, example_inputs):
        names.extend(str(node.target).removesuffix(".default") for node in gm.graph.nodes
                     if node.op == "call_function" and "mcckd" in str(node.target))
        return inner(gm, example_inputs)

    return torch.compile(fn, fullgraph=True, backend=recording), names


def both_losses(logits, valid, hidden, weight, bias, labels, answer_index):
    kl = pairwise_sym_kl(logits, valid, temperature=1.5, reduction="none", backend="native")
    out = fused_linear_mcc_loss(hidden, weight, labels, answer_index, bias=bias, alpha=0.3, chunk_size=8,
                                backend="native")
    return kl, *out


@pytest.mark.parametrize("backend", ("aot_eager", "inductor"))
def test_both_ops_compile_and_match_eager(backend):
    logits, valid = random_logits(3, 4, 1500, seed=1)
    logits = logits.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # strided
    gen = torch.Generator().manual_seed(2)
    N, d, V = 29, 12, 97
    params = [torch.randn(N, d, generator=gen), torch.randn(V, d, generator=gen) / 2,
              torch.randn(V, generator=gen)]
    params = [p.requires_grad_() for p in params]
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[::4] = -100
    answer_index = torch.tensor([[1, 5, 9], [2, 3, -1]])
    args = (logits, valid, *params, labels, answer_index)
    fn, names = compiled(both_losses, backend)
    got, want = fn(*args), both_losses(*args)
    weights = torch.tensor([0.5, -1.0, 2.0])
    got_objective = (got[0] * weights).sum() + sum(c * o for c, o in zip(FUSED_COEFS, got[1:]))
    want_objective = (want[0] * weights).sum() + sum(c * o for c, o in zip(FUSED_COEFS, want[1:]))
    got_grads = torch.autograd.grad(got_objective, (logits, *params))
    want_grads = torch.autograd.grad(want_objective, (logits, *params))
    assert "mcckd.native_pairwise_kl_forward" in names and "mcckd.fused_linear_mcc_native" in names
    for g, w in zip((*got, *got_grads), (*want, *want_grads)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
