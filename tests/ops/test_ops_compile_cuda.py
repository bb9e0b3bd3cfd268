"""torch.compile(fullgraph=True) of both ops on a CUDA GPU with backend "triton" (run with
TRITON_INTERPRET=0 and `pytest -m cuda`): the triton_op nodes, Inductor's code holding the
launchers' kernels, and the compiled forward and backward against eager and float64."""
import pytest
import torch
from helpers import FUSED_COEFS, loss_and_grad, pairwise_definition, relative_error, rounded_to, run_fused
from torch._dynamo.backends.registry import lookup_backend
from torch._inductor.utils import run_and_get_code

from mcckd.ops import fused_linear_mcc_loss, pairwise_sym_kl
from mcckd.ops.reference import fused_linear_mcc_reference

pytestmark = pytest.mark.cuda
DEVICE = torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(fn, backend="inductor"):
    """(torch.compile(fn, fullgraph=True), the FX graphs Dynamo hands the backend)."""
    graphs = []
    inner = lookup_backend(backend)

    def recording(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    return torch.compile(fn, fullgraph=True, backend=recording), graphs


def mcckd_ops(graphs):
    return [str(node.target).removesuffix(".default") for gm in graphs for node in gm.graph.nodes
            if node.op == "call_function" and "mcckd" in str(node.target)]


def near_identical(G, K, V, eps, seed, scale=1.0, dtype=torch.float32):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    base = scale * torch.randn(G, 1, V, generator=gen, device=DEVICE)
    return (base + eps * torch.randn(G, K, V, generator=gen, device=DEVICE)).to(dtype)


def fused_inputs(N=300, d=64, V=4099, G=8, K=4, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=gen, device=DEVICE)
    labels[::5] = -100
    answer_index = torch.randint(0, N, (G, K), generator=gen, device=DEVICE)
    answer_valid = torch.ones(G, K, dtype=torch.bool, device=DEVICE)
    if G:
        answer_index[-1, -1] = -1
        answer_valid[0, 0] = False
    return dict(hidden=torch.randn(N, d, generator=gen, device=DEVICE, dtype=torch.float64),
                weight=torch.randn(V, d, generator=gen, device=DEVICE, dtype=torch.float64) * (3 / d**0.5),
                bias=torch.randn(V, generator=gen, device=DEVICE, dtype=torch.float64),
                labels=labels, answer_index=answer_index, answer_valid=answer_valid)


@pytest.mark.parametrize("reduction", ("mean", "none"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("fp32", "bf16"))
def test_compiled_triton_pairwise_kl_matches_eager_and_float64(dtype, reduction):
    logits = near_identical(16, 4, 32000, 1e-3, seed=1, scale=3.0, dtype=dtype)
    valid = torch.rand(16, 4, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(2)) > 0.2
    grad_output = torch.rand(16, device=DEVICE) if reduction == "none" else torch.tensor(1.3, device=DEVICE)

    def kl(x):
        return pairwise_sym_kl(x, valid, temperature=1.5, reduction=reduction, backend="triton")

    fn, graphs = compiled(kl)
    loss, grad = loss_and_grad(fn, logits, grad_output)
    eager_loss, eager_grad = loss_and_grad(kl, logits, grad_output)
    want, want_grad = loss_and_grad(lambda x: pairwise_definition(x, valid, 1.5, reduction), logits.double(),
                                    grad_output.double())
    assert mcckd_ops(graphs) == ["mcckd.pairwise_kl_triton_forward"]
    assert grad.dtype == dtype
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.float(), eager_grad.float(), rtol=1e-5, atol=0)
    assert relative_error(loss, want) < 1e-4
    assert relative_error(grad, want_grad) < (1e-4 if dtype == torch.float32 else 1e-2)


def test_inductor_sees_the_triton_kernels():
    """triton_op, not an opaque op: the generated code launches the launchers' kernels."""
    logits = near_identical(4, 3, 4099, 1e-2, seed=3).requires_grad_()
    fn = torch.compile(lambda x: pairwise_sym_kl(x, backend="triton"), fullgraph=True)
    _, codes = run_and_get_code(fn, logits)
    assert any("_pairwise_kl_fwd_kernel" in code for code in codes)
    assert not any("torch.ops.mcckd.pairwise_kl_triton_forward" in code for code in codes)


@pytest.mark.parametrize("G", (8, 0))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("fp32", "bf16"))
def test_compiled_triton_fused_loss_matches_eager_and_float64(dtype, G):
    inputs = fused_inputs(G=G)

    def loss(h, w, labels, index, answer_valid, bias):
        return fused_linear_mcc_loss(h, w, labels, index, answer_valid=answer_valid, bias=bias, alpha=0.4,
                                     backend="triton")

    fn, graphs = compiled(loss)
    got = run_fused(fn, inputs, dtype)
    eager = run_fused(loss, inputs, dtype)
    want = run_fused(lambda *a, **k: fused_linear_mcc_reference(*a, **k, alpha=0.4),
                     rounded_to(inputs, dtype), torch.float64)
    assert mcckd_ops(graphs) == ["mcckd.fused_linear_mcc_triton"]
    # Inductor may fuse and round the backward's scalings differently: one bf16 ulp apart.
    same = 1e-5 if dtype == torch.float32 else 1e-2
    for g, e, w in zip(got, eager, want):
        assert relative_error(g, e) < same
        assert relative_error(g, w) < (1e-4 if dtype == torch.float32 else 2e-2)
    assert (got[2].item() == 0.0) == (G == 0)


def test_compiled_training_step_of_both_ops():
    """One graph for CE + consistency and an extra pairwise term, with gradients not 1."""
    inputs = fused_inputs()
    params = [inputs[k].float().requires_grad_() for k in ("hidden", "weight", "bias")]
    logits = near_identical(6, 4, 4099, 1e-4, seed=4, scale=30.0).requires_grad_()

    def objective(h, w, b, x):
        out = fused_linear_mcc_loss(h, w, inputs["labels"], inputs["answer_index"],
                                    answer_valid=inputs["answer_valid"], bias=b, backend="triton")
        kl = pairwise_sym_kl(x, reduction="sum", backend="triton")
        return sum(c * o for c, o in zip(FUSED_COEFS, out)) + 0.6 * kl

    fn, graphs = compiled(objective)
    got, want = fn(*params, logits), objective(*params, logits)
    grads = torch.autograd.grad(got, (*params, logits))
    want_grads = torch.autograd.grad(want, (*params, logits))
    assert len(graphs) == 1
    assert sorted(mcckd_ops(graphs)) == ["mcckd.fused_linear_mcc_triton", "mcckd.pairwise_kl_triton_forward"]
    for g, w in zip((got, *grads), (want, *want_grads)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_triton_pairwise_ops_pass_opcheck():
    """Schema, fakes (the launchers on fake tensors), autograd registration and AOT dispatch."""
    logits = near_identical(3, 4, 300, 1e-2, seed=5)
    valid = torch.tensor([[True, True, False, True], [True] * 4, [False, True, False, False]], device=DEVICE)
    for mask in (valid, None):
        forward = torch.ops.mcckd.pairwise_kl_triton_forward
        torch.library.opcheck(forward, (logits.requires_grad_(), mask, 0.7))
        group_loss, stats = forward(logits.detach(), mask, 0.7)
        torch.library.opcheck(torch.ops.mcckd.pairwise_kl_triton_backward,
                              (torch.rand(3, device=DEVICE), logits.detach(), mask, group_loss, stats, 0.7))
