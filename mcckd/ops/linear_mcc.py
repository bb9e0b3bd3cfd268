"""Fused lm_head + cross-entropy + consistency loss that never materialises the [N, V] logits.

Math (DESIGN.md; `reference.py` holds the materialised specification). Token t has hidden
state h_t [d], target y_t and logits z_t = W h_t + b [V]; n counts the targets that are not
ignore_index (at least 1):

    CE   = (1/n) sum_t lse(z_t) - z_t[y_t],        dCE/dz_t = (softmax(z_t) - onehot(y_t)) / n
    KL   = pairwise_sym_kl(Z, valid, T),           Z [G, K, V] = logits of the rows answer_index
    loss = CE + alpha * KL

and through z = W h + b, with D = dLoss/dz: dh_t = D_t W, dW = sum_t D_t^T h_t, db = sum_t D_t.

Forward, over chunks of C tokens: the logits tile [C, V] by cuBLAS with a float32 output
(low-precision operands, float32 accumulation; rounding logits of magnitude 30 to bf16 moves
them by up to 0.06, Liger-Kernel issue 1432); a Triton kernel with an online log-sum-exp stores each
row's loss, then overwrites the tile with softmax - onehot in the operand dtype (0 for ignored
rows); then dh = D W and dW += D^T h, both accumulated in float32. The G*K answer rows are
projected the same way and pairwise_sym_kl gives the KL and its gradient. All gradients are
computed in the forward, as Liger-Kernel and cut-cross-entropy do, and held unscaled in
float32: backward multiplies them by dLoss/dCE / n, adds the answer rows' part scaled by
dLoss/dKL (so ce and kl can be differentiated apart) and rounds once to the input dtypes.
Extra memory: C V (4 + operand bytes) + 4 V d (float32 dW) + 4 N d + ~16 G K V bytes, plus
float32 copies of hidden and weight where low-precision products cannot be written in float32.
"""
import functools
import math
import numbers
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from mcckd.ops.launch import check_triton_can_run
from mcckd.ops.pairwise_kl import MAX_TRITON_K, pairwise_sym_kl
from mcckd.ops.validation import FLOAT_DTYPES, check_choice, check_positive_finite, check_shape, check_tensor

BACKENDS = ("auto", "triton", "torch")
INDEX_DTYPES = (torch.int64, torch.int32)
# Chunk policy (_auto_chunk_size): a memory budget for the logits tile and its gradient, and a
# floor on the rows per chunk. dW += D^T h reads and writes the float32 dW (8 V d bytes) for
# 2 C V d FLOPs: C >= 1024 keeps it near or above the H100/H200 ridge (~200-300 FLOP/byte),
# and 1024 CE programs fill 132 SMs several times over. Liger's chunks (BT / ceil(V / d), 512
# rows for V = 128256) sit below it.
_CUDA_CHUNK_BUDGET = 1 << 30
_CUDA_MIN_CHUNK = 1024
_CPU_CHUNK_BUDGET = 64 << 20
_CPU_MIN_CHUNK = 64
_MAX_BLOCK_V = 4096
# Rows of dW per float32 temporary where addmm cannot accumulate into float32 (128 MiB at d=4096).
_ACCUMULATE_ROWS = 8192
# Below -1e30 the running max is "no finite value seen yet": finite, so deltas stay finite.
_NO_MAX = tl.constexpr(-1e30)


@triton.jit
def _load_logits(row_ptr, bias_ptr, cols, V, active, HAS_BIAS: tl.constexpr):
    """z [BLOCK_V] float32 (+ bias); -inf outside [0, V) and on ignored rows (nothing is read)."""
    mask = cols < tl.where(active, V, 0)
    z = tl.load(row_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return z


@triton.jit
def _cross_entropy_kernel(
    logits_ptr, bias_ptr, labels_ptr, loss_ptr, grad_ptr,
    V, stride_logits, stride_grad, ignore_index,
    BLOCK_V: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GRAD: tl.constexpr,
):
    """Program r: loss_r = lse(z_r) - z_r[y_r] (0 when y_r = ignore_index) and, if HAS_GRAD,
    grad_r = softmax(z_r) - onehot(y_r) (0 on ignored rows). grad may alias the logits: each
    element is read before it is written, by the same thread.

    lse in one read: per tile, m' = max(m, max z), d = d exp(m - m') + sum exp(z - m').
    """
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row).to(tl.int64)
    active = label != ignore_index
    row_ptr = logits_ptr + row * stride_logits
    m = tl.full([], _NO_MAX, tl.float32)
    d = tl.zeros([], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        z = _load_logits(row_ptr, bias_ptr, v0 + tl.arange(0, BLOCK_V), V, active, HAS_BIAS)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(tl.where(active, d, 1.0))  # ignored rows: d = 0, and p = 0 below
    # Labels were validated; the mask only guarantees that no read leaves the row.
    has_target = active & (label >= 0) & (label < V)
    target_col = tl.where(has_target, label, 0)
    z_target = tl.load(row_ptr + target_col, mask=has_target, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z_target += tl.load(bias_ptr + target_col, mask=has_target, other=0.0).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(active, lse - z_target, 0.0))
    if HAS_GRAD:
        grad_row = grad_ptr + row * stride_grad
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            p = tl.exp(_load_logits(row_ptr, bias_ptr, cols, V, active, HAS_BIAS) - lse)
            grad = tl.where(active, tl.where(cols == label, p - 1.0, p), 0.0)
            tl.store(grad_row + cols, grad.to(grad_ptr.dtype.element_ty), mask=cols < V)


def cross_entropy_rows_triton(logits, bias, labels, ignore_index, loss_out, grad_out):
    """Launch the CE kernel on logits [C, V] float32: row losses into loss_out [C] float32 and,
    unless grad_out is None, softmax - onehot into grad_out [C, V] (may be logits itself)."""
    C, V = logits.shape
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(V))
    has_grad = grad_out is not None
    _cross_entropy_kernel[(C,)](
        logits, bias if bias is not None else logits, labels, loss_out, grad_out if has_grad else logits,
        V, logits.stride(0), grad_out.stride(0) if has_grad else 0, ignore_index,
        BLOCK_V=block_v, HAS_BIAS=bias is not None, HAS_GRAD=has_grad, num_warps=8 if block_v >= 2048 else 4,
    )


def cross_entropy_rows_torch(logits, bias, labels, ignore_index, loss_out, grad_out):
    """cross_entropy_rows_triton in PyTorch ops, in place on logits (the CPU path)."""
    if bias is not None:
        logits += bias
    ignored = labels == ignore_index
    targets = torch.where(ignored, 0, labels).long().unsqueeze(1)
    z_target = logits.gather(1, targets).squeeze(1)
    m = logits.amax(dim=1, keepdim=True)
    e = logits.sub_(m).exp_()
    total = e.sum(dim=1, keepdim=True)
    loss_out.copy_((m + total.log()).squeeze(1) - z_target).masked_fill_(ignored, 0.0)
    if grad_out is not None:
        p = e.div_(total)
        p.scatter_add_(1, targets, torch.full_like(z_target, -1.0).unsqueeze(1))
        p.masked_fill_(ignored.unsqueeze(1), 0.0)
        if grad_out.data_ptr() != p.data_ptr():
            grad_out.copy_(p)


@functools.lru_cache(maxsize=None)
def _float32_output_matmuls(device, dtype):
    """(mm, addmm): whether torch.mm writes float32 products of `dtype` operands here (out_dtype,
    CUDA, torch >= 2.8), and whether torch.addmm accumulates them into a float32 tensor in place
    (a float32 `self` with low-precision operands: newer torch, pytorch#167931)."""
    a = torch.zeros(16, 16, dtype=dtype, device=device)
    acc = torch.zeros(16, 16, dtype=torch.float32, device=device)

    def works(matmul):
        try:
            matmul()
        except (RuntimeError, TypeError):
            return False
        return True

    return (works(lambda: torch.mm(a, a, out_dtype=torch.float32, out=acc)),
            works(lambda: torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)))


def _accumulator_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _operand_dtype(hidden):
    """Matmul operand dtype: the input's, or float32 copies where low-precision products
    cannot be written in float32 (CPU, torch < 2.8), at a cost of O((N + V) d) memory."""
    if hidden.dtype in (torch.float32, torch.float64):
        return hidden.dtype
    if hidden.is_cuda and _float32_output_matmuls(hidden.device, hidden.dtype)[0]:
        return hidden.dtype
    return torch.float32


def _mm_into(out, a, b):
    """out = a @ b in out's (float32 or float64) dtype whatever a's; cuBLAS accumulates in float32."""
    if a.dtype == out.dtype:
        return torch.mm(a, b, out=out)
    return torch.mm(a, b, out_dtype=out.dtype, out=out)


def _addmm_into(acc, a, b):
    """acc += a @ b: one GEMM with beta = 1 where torch can accumulate low-precision products
    into float32, else block by block of rows through a float32 temporary."""
    if a.dtype == acc.dtype:
        return acc.addmm_(a, b)
    if _float32_output_matmuls(acc.device, a.dtype)[1]:
        return torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    for start in range(0, acc.shape[0], _ACCUMULATE_ROWS):
        block = acc[start:start + _ACCUMULATE_ROWS]
        block += _mm_into(torch.empty_like(block), a[start:start + _ACCUMULATE_ROWS], b)
    return acc


def _auto_chunk_size(N, V, operand_dtype, device):
    """Tokens per chunk: the float32 logits tile and its gradient in the operand dtype fill
    a budget (1 GiB on CUDA, 64 MiB elsewhere) but the chunk never drops below the rows that
    keep the GEMMs efficient; chunks are made equal so no small one trails."""
    accumulator = _accumulator_dtype(operand_dtype)
    bytes_per_row = V * (accumulator.itemsize + (operand_dtype.itemsize if operand_dtype != accumulator else 0))
    on_cuda = device.type == "cuda"
    budget, floor = (_CUDA_CHUNK_BUDGET, _CUDA_MIN_CHUNK) if on_cuda else (_CPU_CHUNK_BUDGET, _CPU_MIN_CHUNK)
    rows = max(budget // bytes_per_row, floor)
    return triton.cdiv(N, triton.cdiv(N, rows))


def _cross_entropy_chunks(hidden, weight, bias, labels, ignore_index, chunk_size, cross_entropy_rows, needs):
    """Sum over tokens of the CE loss and its unscaled gradients, chunk by chunk.

    Returns (loss_sum, dh [N, d], dW [V, d], db [V]); gradients are sums of softmax - onehot
    terms in float32 (float64 for float64 input), None where not needed.
    """
    N, d = hidden.shape
    V = weight.shape[0]
    need_h, need_w, need_b = needs
    accumulator = _accumulator_dtype(hidden.dtype)
    f = dict(dtype=accumulator, device=hidden.device)
    row_loss = torch.empty(N, **f)
    grad_h = torch.empty(N, d, **f) if need_h else None
    grad_w = torch.zeros(V, d, **f) if need_w else None
    grad_b = torch.zeros(V, **f) if need_b else None
    logits = torch.empty(min(chunk_size, N), V, **f)
    grad_logits = None
    if any(needs):
        # Same dtype: the kernel overwrites the logits with their gradient in place.
        grad_logits = logits if hidden.dtype == accumulator else torch.empty_like(logits, dtype=hidden.dtype)
    for start in range(0, N, chunk_size):
        stop = min(start + chunk_size, N)
        h = hidden[start:stop]
        z = _mm_into(logits[: stop - start], h, weight.T)
        g = grad_logits[: stop - start] if grad_logits is not None else None
        cross_entropy_rows(z, bias, labels[start:stop], ignore_index, row_loss[start:stop], g)
        if need_h:
            _mm_into(grad_h[start:stop], g, weight)
        if need_w:
            _addmm_into(grad_w, g.T, h)
        if need_b:
            grad_b += g.sum(dim=0, dtype=accumulator)
    return row_loss.sum(), grad_h, grad_w, grad_b


def _consistency(hidden, weight, bias, answer_index, answer_valid, temperature, kl_backend, need_grad):
    """KL of the answer rows, dKL/dZ [G*K, V] float32 (None unless need_grad), their hidden
    states [G*K, d] and token positions [G*K] (missing rows point at token 0 and are invalid)."""
    G, K = answer_index.shape
    V = weight.shape[0]
    rows = answer_index.clamp(min=0).reshape(-1)
    valid = answer_index >= 0
    if answer_valid is not None:
        valid = valid & answer_valid
    h_answer = hidden.index_select(0, rows)
    accumulator = _accumulator_dtype(hidden.dtype)
    z = _mm_into(torch.empty(G * K, V, dtype=accumulator, device=hidden.device), h_answer, weight.T)
    if bias is not None:
        z += bias
    with torch.enable_grad():
        z = z.view(G, K, V).requires_grad_(need_grad)
        kl = pairwise_sym_kl(z, valid, temperature=temperature, backend=kl_backend)
        grad_z = torch.autograd.grad(kl, z)[0].view(G * K, V) if need_grad else None
    return kl.detach(), grad_z, h_answer, rows


class FusedLinearMCCFunction(torch.autograd.Function):
    """(ce, kl) of hidden, weight and bias; gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, answer_index, answer_valid, temperature, ignore_index,
                chunk_size, backend, kl_backend):
        needs = tuple(ctx.needs_input_grad[:3])
        operand_dtype = _operand_dtype(hidden)
        hidden_op, weight_op = hidden.to(operand_dtype), weight.to(operand_dtype)
        if chunk_size is None:
            chunk_size = _auto_chunk_size(hidden.shape[0], weight.shape[0], operand_dtype, hidden.device)
        rows_fn = cross_entropy_rows_triton if backend == "triton" else cross_entropy_rows_torch
        loss_sum, grad_h, grad_w, grad_b = _cross_entropy_chunks(
            hidden_op, weight_op, bias, labels, ignore_index, chunk_size, rows_fn, needs)
        kl, grad_z, h_answer, rows = _consistency(
            hidden_op, weight_op, bias, answer_index, answer_valid, temperature, kl_backend, any(needs))
        n_targets = (labels != ignore_index).sum().clamp(min=1)
        inv_n = 1.0 / n_targets.to(loss_sum.dtype)
        ctx.save_for_backward(grad_h, grad_w, grad_b, grad_z, h_answer if needs[1] else None,
                              rows if needs[0] else None, weight_op if needs[0] else None, inv_n)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None, operand_dtype)
        return loss_sum * inv_n, kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce, grad_kl):
        # In-place updates of the saved buffers: a second backward through the same graph
        # raises autograd's "modified by an inplace operation" error instead of wrong values.
        grad_h, grad_w, grad_b, grad_z, h_answer, rows, weight_op, inv_n = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype, operand_dtype = ctx.dtypes
        coef_ce = grad_ce.to(inv_n.dtype) * inv_n
        grad_answer = grad_z * grad_kl.to(grad_z.dtype)  # [G*K, V] = dLoss/dZ of the answer rows
        grad_answer_op = grad_answer.to(operand_dtype)
        out_h = out_w = out_b = None
        if grad_h is not None:
            grad_h.mul_(coef_ce)
            answer_rows = _mm_into(grad_h.new_empty(rows.shape[0], grad_h.shape[1]), grad_answer_op, weight_op)
            out_h = grad_h.index_add_(0, rows, answer_rows).to(hidden_dtype)
        if grad_w is not None:
            out_w = _addmm_into(grad_w.mul_(coef_ce), grad_answer_op.T, h_answer).to(weight_dtype)
        if grad_b is not None:
            out_b = grad_b.mul_(coef_ce).add_(grad_answer.sum(dim=0, dtype=grad_b.dtype)).to(bias_dtype)
        return out_h, out_w, out_b, None, None, None, None, None, None, None, None


class LinearMCCOutput(NamedTuple):
    """loss = ce + alpha * kl: scalars, float32 (float64 for float64 input)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_scalars(alpha, ignore_index, chunk_size, temperature, backend):
    """ValueError naming the first bad argument among the non-tensor ones."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite real number >= 0, got {alpha!r}")
    if not _is_int(ignore_index):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if chunk_size is not None and not (_is_int(chunk_size) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    check_positive_finite("temperature", temperature)
    check_choice("backend", backend, BACKENDS)


def _check_tensors(hidden, weight, labels, answer_index, answer_valid, bias):
    check_tensor("hidden", hidden, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    N, d = hidden.shape
    if N < 1 or d < 1:
        raise ValueError(f"hidden must have shape [N, d] with N >= 1 and d >= 1, got {tuple(hidden.shape)}")
    device = hidden.device
    check_tensor("weight", weight, ndim=2, dtypes=(hidden.dtype,), device=device)
    V = weight.shape[0]
    if V < 1 or weight.shape[1] != d:
        raise ValueError(f"weight must have shape [V, {d}] with V >= 1 (d from hidden), got {tuple(weight.shape)}")
    check_tensor("labels", labels, ndim=1, dtypes=INDEX_DTYPES, device=device)
    check_shape("labels", labels, (N,))
    check_tensor("answer_index", answer_index, ndim=2, dtypes=INDEX_DTYPES, device=device)
    G, K = answer_index.shape
    if G < 1 or K < 2:
        raise ValueError(f"answer_index must have shape [G, K] with G >= 1 and K >= 2, got {tuple(answer_index.shape)}")
    if answer_valid is not None:
        check_tensor("answer_valid", answer_valid, ndim=2, dtypes=(torch.bool,), device=device)
        check_shape("answer_valid", answer_valid, (G, K))
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=(weight.dtype,), device=device)
        check_shape("bias", bias, (V,))


def _check_index_values(labels, answer_index, V, N, ignore_index):
    """Labels in [0, V) or ignore_index, answer_index in [-1, N). On CUDA this reads one pair
    of flags back: the only host sync, needed to raise ValueError before any kernel reads."""
    bad_labels = ((labels < 0) | (labels >= V)) & (labels != ignore_index)
    bad_index = (answer_index < -1) | (answer_index >= N)
    labels_bad, index_bad = torch.stack([bad_labels.any(), bad_index.any()]).tolist()
    if labels_bad:
        raise ValueError(f"labels must lie in [0, {V}) (V from weight) or equal ignore_index={ignore_index}")
    if index_bad:
        raise ValueError(f"answer_index must lie in [-1, {N}) (-1 = missing, N from hidden)")


def _resolve_backends(hidden, K, backend):
    """(cross-entropy backend, pairwise KL backend): 'auto' is Triton on CUDA, PyTorch elsewhere."""
    if backend == "auto":
        if not hidden.is_cuda or hidden.dtype == torch.float64:
            return "torch", "torch"
        return "triton", "triton" if K <= MAX_TRITON_K else "torch"
    if backend == "triton":
        if hidden.dtype == torch.float64:
            raise ValueError("hidden must be float32, bfloat16 or float16 for backend='triton' "
                             "(float64: use backend='torch')")
        if K > MAX_TRITON_K:
            raise ValueError(f"answer_index must have K <= {MAX_TRITON_K} for backend='triton', got K={K} "
                             "(use backend='torch')")
        check_triton_can_run("hidden", hidden, _cross_entropy_kernel)
    return backend, backend


def fused_linear_mcc_loss(hidden, weight, labels, answer_index, *, answer_valid=None, bias=None, alpha=0.1,
                          temperature=1.0, ignore_index=-100, chunk_size=None, backend="auto"):
    """MCC-KD loss of packed tokens without their [N, V] logits: CE + alpha * consistency KL.

    hidden [N, d] float32/bfloat16/float16 (float64 with backend "torch"); weight [V, d] and
    bias [V] or None in hidden's dtype; labels [N] int64/int32, the target of each position
    (ignore_index: no target); answer_index [G, K] int64/int32, the positions whose logits
    predict the answer under each of K rationales (-1: missing); answer_valid [G, K] bool or None.
    CE is the mean over targets (0 when there are none); KL the mean over groups with >= 2
    valid rows of pairwise_sym_kl at temperature. chunk_size: tokens per logits tile (None:
    chosen for the device). backend: "auto" (Triton on CUDA, PyTorch elsewhere), "triton"
    (on CPU only under TRITON_INTERPRET=1), "torch". Returns LinearMCCOutput(loss, ce, kl);
    gradients flow to hidden, weight and bias.
    """
    _check_scalars(alpha, ignore_index, chunk_size, temperature, backend)
    _check_tensors(hidden, weight, labels, answer_index, answer_valid, bias)
    ce_backend, kl_backend = _resolve_backends(hidden, answer_index.shape[1], backend)
    _check_index_values(labels, answer_index, weight.shape[0], hidden.shape[0], ignore_index)
    ce, kl = FusedLinearMCCFunction.apply(
        hidden, weight, bias, labels.contiguous(), answer_index,
        answer_valid.contiguous() if answer_valid is not None else None,
        float(temperature), int(ignore_index), chunk_size, ce_backend, kl_backend,
    )
    return LinearMCCOutput(ce + alpha * kl, ce, kl)


class MCCKDLoss(torch.nn.Module):
    """MCC-KD loss from a model's final hidden states and its lm_head: `fused_linear_mcc_loss`
    with fixed alpha, temperature, ignore_index, chunk_size and backend.

    forward(hidden [..., d], weight [V, d], labels [...], answer_index [G, K], answer_valid=None,
    bias=None): leading dimensions are flattened to N tokens, which answer_index indexes.
    """

    def __init__(self, alpha=0.1, temperature=1.0, ignore_index=-100, chunk_size=None, backend="auto"):
        super().__init__()
        _check_scalars(alpha, ignore_index, chunk_size, temperature, backend)
        self.alpha, self.temperature, self.ignore_index = alpha, temperature, ignore_index
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, hidden, weight, labels, answer_index, answer_valid=None, bias=None):
        if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
            raise ValueError(f"hidden must be a tensor [..., d], got {getattr(hidden, 'shape', type(hidden).__name__)}")
        if not isinstance(labels, torch.Tensor) or labels.shape != hidden.shape[:-1]:
            raise ValueError(f"labels must have shape {tuple(hidden.shape[:-1])} (hidden without d), "
                             f"got {tuple(getattr(labels, 'shape', ()))}")
        return fused_linear_mcc_loss(
            hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), answer_index,
            answer_valid=answer_valid, bias=bias, alpha=self.alpha, temperature=self.temperature,
            ignore_index=self.ignore_index, chunk_size=self.chunk_size, backend=self.backend,
        )

    def extra_repr(self):
        return (f"alpha={self.alpha}, temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"chunk_size={self.chunk_size}, backend={self.backend!r}")
