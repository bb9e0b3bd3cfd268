"""fused_linear_mcc_loss on a CUDA GPU (run with TRITON_INTERPRET=0 and `pytest -m cuda`).

What the CPU tests cannot reach: compiled Triton kernels, cuBLAS float32 outputs of bf16/fp16
operands (torch.mm/addmm out_dtype), the automatic chunk size, and the real shape N=16384,
d=4096, V=128256 in bf16 against a float64 ground truth computed in chunks.
"""
import pytest
import torch
from helpers import rounded_to
from helpers import run_fused as run

from mcckd.ops import fused_linear_mcc_loss, fused_linear_mcc_reference, matmul, pairwise_sym_kl_reference
from mcckd.ops.cross_entropy import _cross_entropy_kernel
from mcckd.ops.launch import is_interpreted
from mcckd.ops.linear_mcc_kernels import _auto_chunk_size
from mcckd.ops.matmul import addmm_into

pytestmark = pytest.mark.cuda
DEVICE = torch.device("cuda")


def test_compiled_kernels_and_float32_output_gemms():
    assert not is_interpreted(_cross_entropy_kernel), "set TRITON_INTERPRET=0 to test the compiled kernels"
    for dtype in (torch.bfloat16, torch.float16):
        mm, _ = matmul.float32_output_matmuls(DEVICE, dtype)
        assert mm, f"torch.mm(out_dtype=float32) of {dtype} operands is the low-precision path (torch >= 2.8)"


@pytest.mark.parametrize("in_place", (True, False), ids=("addmm_in_place", "row_blocks"))
def test_weight_gradient_accumulates_in_float32(in_place, monkeypatch):
    """acc += a @ b with bf16 a, b and float32 acc: one addmm where torch has it, row blocks otherwise."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    a = torch.randn(20000, 300, generator=gen, device=DEVICE).bfloat16()
    b = torch.randn(300, 64, generator=gen, device=DEVICE).bfloat16()
    acc = torch.randn(20000, 64, generator=gen, device=DEVICE)
    expected = acc.double() + a.double() @ b.double()
    if not in_place:
        monkeypatch.setattr(matmul, "float32_output_matmuls", lambda device, dtype: (True, False))
    torch.testing.assert_close(addmm_into(acc, a, b).double(), expected, rtol=1e-5, atol=1e-4)


def make_inputs(N, d, V, G, K, *, bias, seed=0, dtype=torch.float64):
    """Logits of std ~3, 30% ignored targets, a missing and a masked answer row."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=gen, device=DEVICE)
    labels[torch.rand(N, generator=gen, device=DEVICE) < 0.3] = -100
    answer_index = torch.randperm(N, generator=gen, device=DEVICE)[: G * K].view(G, K)
    answer_index[1, -1] = -1
    answer_valid = torch.ones(G, K, dtype=torch.bool, device=DEVICE)
    answer_valid[0, 0] = False
    return dict(
        hidden=torch.randn(N, d, generator=gen, device=DEVICE, dtype=dtype),
        weight=torch.randn(V, d, generator=gen, device=DEVICE, dtype=dtype).mul_(3 / d**0.5),
        bias=torch.randn(V, generator=gen, device=DEVICE, dtype=dtype) if bias else None,
        labels=labels, answer_index=answer_index, answer_valid=answer_valid,
    )


@pytest.mark.parametrize("backend", ("triton", "torch"))
@pytest.mark.parametrize(
    "dtype", (torch.float32, torch.bfloat16, torch.float16), ids=("fp32", "bf16", "fp16")
)
def test_matches_reference(dtype, backend):
    """fp32: against float64; bf16/fp16: error no larger than the materialised reference's in
    the same dtype (bf16 logits from cuBLAS) + 1e-4 max|truth|. Chunks of 200 leave a tail."""
    inputs = make_inputs(777, 128, 5003, 8, 4, bias=True)
    got = run(fused_linear_mcc_loss, inputs, dtype, chunk_size=200, backend=backend, alpha=0.3)
    rounded = rounded_to(inputs, dtype)
    exact = run(fused_linear_mcc_reference, rounded, torch.float64, alpha=0.3)
    if dtype == torch.float32:
        for g, e in zip(got, exact):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
        return
    baseline = run(fused_linear_mcc_reference, inputs, dtype, alpha=0.3)
    for name, g, b, e in zip(("loss", "ce", "kl", "hidden", "weight", "bias"), got, baseline, exact):
        ours, reference = (g - e).abs().max().item(), (b - e).abs().max().item()
        assert ours <= reference + 1e-4 * e.abs().max().item(), (
            f"{name}: error {ours:.3g} vs reference {reference:.3g}"
        )


def float64_truth(hidden, weight, labels, answer_index, answer_valid, alpha, chunk=1024):
    """(loss, ce, kl, d loss/d hidden, d loss/d weight) in float64, logits materialised chunk by chunk."""
    h, w = hidden.double(), weight.double()
    n = (labels != -100).sum().clamp(min=1)
    ce = torch.zeros((), dtype=torch.float64, device=DEVICE)
    grad_h, grad_w = torch.empty_like(h), torch.zeros_like(w)
    for start in range(0, h.shape[0], chunk):
        hc, yc = h[start:start + chunk], labels[start:start + chunk]
        z = hc @ w.T
        ce += torch.nn.functional.cross_entropy(z, yc, ignore_index=-100, reduction="sum") / n
        p = torch.softmax(z, dim=1)
        keep = yc != -100
        p[keep, yc[keep]] -= 1
        p[~keep] = 0
        p /= n
        grad_h[start:start + chunk] = p @ w
        grad_w += p.T @ hc
    rows = answer_index.clamp(min=0).reshape(-1)
    z = (h[rows] @ w.T).view(*answer_index.shape, -1).requires_grad_()
    kl = pairwise_sym_kl_reference(z, (answer_index >= 0) & answer_valid)
    grad_z = alpha * torch.autograd.grad(kl, z)[0].view(rows.shape[0], -1)
    grad_h.index_add_(0, rows, grad_z @ w)
    grad_w += grad_z.T @ h[rows]
    return ce + alpha * kl.detach(), ce, kl.detach(), grad_h, grad_w


def relative_error(got, expected):
    return ((got.double() - expected).norm() / expected.norm()).item()


def test_real_shape_bf16_against_float64_in_chunks():
    """N=16384, d=4096, V=128256, G=64, K=4, bf16, automatic chunk size, no bias (Llama's lm_head).

    Values: float32 logits keep them to 1e-4. Gradients: bf16 rounds each element by up to
    2^-9, so norm-wise 1e-2. Memory above the inputs stays within what the design allots:
    float32 dW and its bf16 copy (6 V d), the chunk's logits and gradient (6 C V), float32 dh
    and its bf16 copy (6 N d), the answer rows (24 G K V), and 256 MiB of workspace.
    """
    N, d, V, G, K = 16384, 4096, 128256, 64, 4
    inputs = make_inputs(N, d, V, G, K, bias=False, dtype=torch.bfloat16)
    hidden, weight = inputs["hidden"].requires_grad_(), inputs["weight"].requires_grad_()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fused_linear_mcc_loss(hidden, weight, inputs["labels"], inputs["answer_index"],
                                answer_valid=inputs["answer_valid"], alpha=0.1)
    grad_h, grad_w = torch.autograd.grad(out.loss, (hidden, weight))
    torch.cuda.synchronize()
    peak_extra = torch.cuda.max_memory_allocated() - before
    chunk = _auto_chunk_size(N, V, torch.bfloat16, DEVICE)
    allotted = 6 * V * d + 6 * chunk * V + 6 * N * d + 24 * G * K * V + (256 << 20)
    assert peak_extra <= allotted, f"peak extra {peak_extra / 2**30:.2f} GiB > {allotted / 2**30:.2f} GiB"

    expected = float64_truth(hidden.detach(), weight.detach(), inputs["labels"], inputs["answer_index"],
                             inputs["answer_valid"], alpha=0.1)
    for name, g, e in zip(("loss", "ce", "kl"), out, expected[:3]):
        assert abs(g.item() - e.item()) <= 1e-4 * abs(e.item()), f"{name}: {g.item()} vs {e.item()}"
    for name, g, e in zip(("hidden", "weight"), (grad_h, grad_w), expected[3:]):
        assert relative_error(g, e) < 1e-2, f"d/d{name}: relative error {relative_error(g, e):.3g}"
