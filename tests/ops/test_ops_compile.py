"""torch.compile(fullgraph=True) of both ops on the CPU (backend "torch"): each call is one
torch.library node of a single graph, and the compiled forward and backward match eager and
the float64 definitions. Most tests compile with aot_eager (Dynamo + AOTAutograd, the fakes
and the autograd registration); one goes through Inductor."""
import pytest
import torch
from helpers import FUSED_COEFS, loss_and_grad, pairwise_definition, relative_error, rounded_to, run_fused
from torch._dynamo.backends.registry import lookup_backend

from mcckd.ops import MCCKDLoss, PairwiseSymKL, fused_linear_mcc_loss, pairwise_sym_kl
from mcckd.ops.reference import fused_linear_mcc_reference


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(fn, backend="aot_eager", **kwargs):
    """(torch.compile(fn, fullgraph=True), the FX graphs Dynamo hands the backend)."""
    graphs = []
    inner = lookup_backend(backend)

    def recording(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    return torch.compile(fn, fullgraph=True, backend=recording, **kwargs), graphs


def mcckd_ops(graphs):
    """Names of the mcckd ops called in the graphs, in order."""
    return [str(node.target).removesuffix(".default") for gm in graphs for node in gm.graph.nodes
            if node.op == "call_function" and "mcckd" in str(node.target)]


def near_identical(G, K, V, eps, seed, scale=1.0):
    """Rows of logits: a shared row per group plus eps * noise (float32)."""
    gen = torch.Generator().manual_seed(seed)
    base = scale * torch.randn(G, 1, V, generator=gen)
    return base + eps * torch.randn(G, K, V, generator=gen)


def fused_inputs(N=29, d=12, V=97, G=3, K=3, seed=0):
    """float64 inputs: ignored targets, a missing answer row, a masked one."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[::4] = -100
    answer_index = torch.randint(0, N, (G, K), generator=gen)
    answer_valid = torch.ones(G, K, dtype=torch.bool)
    if G:
        answer_index[-1, -1] = -1
        answer_valid[0, 0] = False
    return dict(hidden=torch.randn(N, d, generator=gen, dtype=torch.float64),
                weight=torch.randn(V, d, generator=gen, dtype=torch.float64) * (3 / d**0.5),
                bias=torch.randn(V, generator=gen, dtype=torch.float64),
                labels=labels, answer_index=answer_index, answer_valid=answer_valid)


def both_losses(logits, valid, hidden, weight, bias, labels, answer_index, answer_valid):
    kl = pairwise_sym_kl(logits, valid, temperature=1.5, reduction="sum", backend="torch")
    out = fused_linear_mcc_loss(hidden, weight, labels, answer_index, answer_valid=answer_valid, bias=bias,
                                alpha=0.3, chunk_size=8, backend="torch")
    return kl, *out


def test_both_ops_compile_with_inductor_into_one_graph_matching_eager():
    logits = near_identical(3, 4, 50, 1e-3, seed=1).requires_grad_()
    valid = torch.tensor([[True, True, False, True], [True] * 4, [False, True, True, False]])
    inputs = fused_inputs()
    params = [inputs[k].float().requires_grad_() for k in ("hidden", "weight", "bias")]
    args = (logits, valid, *params, inputs["labels"], inputs["answer_index"], inputs["answer_valid"])
    fn, graphs = compiled(both_losses, backend="inductor")
    got, want = fn(*args), both_losses(*args)
    coefs = (0.8, *FUSED_COEFS)
    grads = torch.autograd.grad(sum(c * o for c, o in zip(coefs, got)), (logits, *params))
    want_grads = torch.autograd.grad(sum(c * o for c, o in zip(coefs, want)), (logits, *params))
    assert len(graphs) == 1
    assert mcckd_ops(graphs) == ["mcckd.pairwise_kl_torch_forward", "mcckd.fused_linear_mcc_torch"]
    for g, w in zip((*got, *grads), (*want, *want_grads)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("masked", (False, True), ids=("all_rows", "masked"))
def test_compiled_pairwise_kl_keeps_precision_on_near_identical_rows(reduction, masked):
    """Rows 1e-4 apart (scale 30): loss and gradient to 1e-4 of float64, equal to eager."""
    logits = near_identical(4, 3, 300, 1e-4, seed=2, scale=30.0)
    valid = torch.tensor([[True, True, True], [True, False, True], [True, True, False], [True] * 3])
    valid = valid if masked else None
    grad_output = torch.tensor([0.5, -1.25, 2.0, 0.75]) if reduction == "none" else torch.tensor(1.7)
    fn, graphs = compiled(lambda x: pairwise_sym_kl(x, valid, temperature=1.3, reduction=reduction,
                                                    backend="torch"))
    loss, grad = loss_and_grad(fn, logits, grad_output)
    eager_loss, eager_grad = loss_and_grad(
        lambda x: pairwise_sym_kl(x, valid, temperature=1.3, reduction=reduction, backend="torch"),
        logits, grad_output)
    want_loss, want_grad = loss_and_grad(lambda x: pairwise_definition(x, valid, 1.3, reduction),
                                         logits.double(), grad_output.double())
    assert mcckd_ops(graphs) == ["mcckd.pairwise_kl_torch_forward"]
    assert relative_error(loss, want_loss) < 1e-4 and relative_error(grad, want_grad) < 1e-4
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-6, atol=0)


def test_compiled_pairwise_kl_with_dynamic_shapes():
    """A second shape recompiles once with symbolic G and V (the fakes take symbolic sizes),
    and that graph serves a third shape."""
    fn, graphs = compiled(lambda x: pairwise_sym_kl(x, backend="torch"))
    for G, V in ((3, 40), (5, 77), (2, 130)):
        logits = near_identical(G, 4, V, 1e-3, seed=G)
        loss, grad = loss_and_grad(fn, logits, torch.tensor(1.0))
        want, want_grad = loss_and_grad(lambda x: pairwise_definition(x, None, 1.0, "mean"), logits.double(),
                                        torch.tensor(1.0).double())
        assert relative_error(loss, want) < 1e-4 and relative_error(grad, want_grad) < 1e-4
    assert len(graphs) == 2


@pytest.mark.parametrize("G", (3, 0))
@pytest.mark.parametrize("bias", (True, False))
def test_compiled_fused_loss_matches_float64_reference(G, bias):
    """Outputs and gradients of 1.5 loss + 0.25 ce + 0.75 kl; G = 0 gives kl = 0."""
    inputs = fused_inputs(G=G)
    inputs["bias"] = inputs["bias"] if bias else None
    fn, graphs = compiled(lambda h, w, labels, index, answer_valid, bias: fused_linear_mcc_loss(
        h, w, labels, index, answer_valid=answer_valid, bias=bias, alpha=0.4, chunk_size=10, backend="torch"))
    got = run_fused(fn, inputs, torch.float32)
    want = run_fused(lambda *a, **k: fused_linear_mcc_reference(*a, **k, alpha=0.4),
                     rounded_to(inputs, torch.float32), torch.float64)
    assert mcckd_ops(graphs) == ["mcckd.fused_linear_mcc_torch"]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert (got[2].item() == 0.0) == (G == 0)


def test_compiled_modules_match_eager():
    inputs = fused_inputs(N=24)
    hidden = inputs["hidden"].float().view(4, 6, -1).requires_grad_()
    weight = inputs["weight"].float().requires_grad_()
    loss_fn = MCCKDLoss(alpha=0.2, temperature=2.0, chunk_size=7, backend="torch")
    kl_fn = PairwiseSymKL(temperature=0.7, reduction="none", backend="torch")
    logits = near_identical(2, 3, 31, 1e-3, seed=3).requires_grad_()

    def objective(hidden, weight, logits):
        out = loss_fn(hidden, weight, inputs["labels"].view(4, 6), inputs["answer_index"].clamp(max=23))
        return out.loss + kl_fn(logits).sum()

    fn, graphs = compiled(objective)
    got, want = fn(hidden, weight, logits), objective(hidden, weight, logits)
    grads = torch.autograd.grad(got, (hidden, weight, logits))
    want_grads = torch.autograd.grad(want, (hidden, weight, logits))
    assert len(graphs) == 1 and len(mcckd_ops(graphs)) == 2
    for g, w in zip((got, *grads), (want, *want_grads)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_out_of_range_labels_fail_a_device_assert_under_compile():
    """The host-side check becomes a device assert, not a graph break."""
    inputs = fused_inputs()
    labels = inputs["labels"].clone()
    labels[5] = inputs["weight"].shape[0]
    fn, _ = compiled(lambda h, w, labels, idx: fused_linear_mcc_loss(h, w, labels, idx, backend="torch").ce)
    hidden, weight = inputs["hidden"].float(), inputs["weight"].float()
    assert torch.isfinite(fn(hidden, weight, inputs["labels"], inputs["answer_index"]))
    with pytest.raises(RuntimeError, match="labels must lie in"):
        fn(hidden, weight, labels, inputs["answer_index"])


def test_pairwise_ops_pass_opcheck_and_gradcheck():
    """Schema, fake tensors, autograd registration and AOT dispatch (torch.library.opcheck) of
    the torch ops, and the explicit backward against finite differences in float64."""
    logits = near_identical(3, 4, 20, 1e-2, seed=5).double().requires_grad_()
    valid = torch.tensor([[True, True, False, True], [True] * 4, [False, True, False, False]])
    forward = torch.ops.mcckd.pairwise_kl_torch_forward
    for mask in (valid, None):
        torch.library.opcheck(forward, (logits, mask, 0.7))
        group_loss, stats = forward(logits.detach(), mask, 0.7)
        grad_group = torch.randn(3, dtype=torch.float64)
        torch.library.opcheck(torch.ops.mcckd.pairwise_kl_torch_backward,
                              (grad_group, logits.detach(), mask, group_loss, stats, 0.7))
        assert torch.autograd.gradcheck(lambda x, mask=mask: forward(x, mask, 0.7)[0], (logits,))


@pytest.mark.parametrize("needs", ((True, True, True), (True, False, False), (False, False, False)))
def test_fused_op_passes_opcheck(needs):
    """Schema, fakes and autograd registration. Not opcheck's AOT test: it returns the op's
    gradient buffers, which the backward updates in place (fused_linear_mcc_loss never returns
    them; the compile tests above run AOTAutograd on the real use)."""
    inputs = fused_inputs(N=13, d=4, V=11, G=2)
    hidden, weight, bias = (inputs[k].float().requires_grad_(need)
                            for k, need in zip(("hidden", "weight", "bias"), needs))
    args = (hidden, weight, bias, inputs["labels"], inputs["answer_index"], inputs["answer_valid"], 1.3,
            -100, 5, "torch", *needs)
    torch.library.opcheck(torch.ops.mcckd.fused_linear_mcc_torch, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
