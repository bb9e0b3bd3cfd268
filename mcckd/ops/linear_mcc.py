"""Fused lm_head + cross-entropy + consistency loss that never materialises the [N, V] logits.

Math (`reference.py` holds the materialised specification). Token t has hidden
state h_t [d], target y_t and logits z_t = W h_t + b [V]; n counts the targets that are not
ignore_index (at least 1):

    CE   = (1/n) sum_t lse(z_t) - z_t[y_t],        dCE/dz_t = (softmax(z_t) - onehot(y_t)) / n
    KL   = pairwise_sym_kl(Z, valid, T),           Z [G, K, V] = logits of the rows answer_index
    loss = CE + alpha * KL

and through z = W h + b, with D = dLoss/dz: dh_t = D_t W, dW = sum_t D_t^T h_t, db = sum_t D_t.

Forward, over chunks of C tokens: the logits tile [C, V] by cuBLAS with a float32 output
(low-precision operands, float32 accumulation; rounding logits of magnitude 30 to bf16 moves
them by up to 0.06: github.com/linkedin/Liger-Kernel/issues/1432); a Triton kernel with an online
log-sum-exp stores each row's loss, then overwrites the tile with softmax - onehot in the operand
dtype (0 for ignored rows); then dh = D W and dW += D^T h, both accumulated in float32. The G*K
answer rows are projected the same way and pairwise_sym_kl gives the KL and its gradient. All gradients are
computed in the forward, as Liger-Kernel and cut-cross-entropy do, and held unscaled in
float32: backward multiplies them by dLoss/dCE / n, adds the answer rows' part scaled by
dLoss/dKL (so ce and kl can be differentiated apart) and rounds once to the input dtypes.
Extra memory: C V (4 + operand bytes) + 4 V d (float32 dW) + 4 N d + ~16 G K V bytes, plus
float32 copies of hidden and weight where low-precision products cannot be written in float32.
"""
import math
import numbers
from typing import NamedTuple

import torch

from mcckd.ops import matmul
from mcckd.ops.backends import OP_BACKENDS, resolve_backend
from mcckd.ops.cross_entropy_torch import cross_entropy_rows_torch
from mcckd.ops.matmul import accumulator_dtype, addmm_into, mm_into
from mcckd.ops.pairwise_kl import pairwise_sym_kl
from mcckd.ops.validation import FLOAT_DTYPES, check_choice, check_positive_finite, check_shape, check_tensor

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


def _auto_chunk_size(N, V, operand_dtype, device):
    """Tokens per chunk: the float32 logits tile and its gradient in the operand dtype fill
    a budget (1 GiB on CUDA, 64 MiB elsewhere) but the chunk never drops below the rows that
    keep the GEMMs efficient; chunks are made equal so no small one trails."""
    accumulator = accumulator_dtype(operand_dtype)
    bytes_per_row = V * (
        accumulator.itemsize + (operand_dtype.itemsize if operand_dtype != accumulator else 0)
    )
    on_cuda = device.type == "cuda"
    budget, floor = (_CUDA_CHUNK_BUDGET, _CUDA_MIN_CHUNK) if on_cuda else (_CPU_CHUNK_BUDGET, _CPU_MIN_CHUNK)
    rows = max(budget // bytes_per_row, floor)
    chunks = -(-N // rows)
    return -(-N // chunks)


def _cross_entropy_chunks(hidden, weight, bias, labels, ignore_index, chunk_size, cross_entropy_rows, needs):
    """Sum over tokens of the CE loss and its unscaled gradients, chunk by chunk.

    Returns (loss_sum, dh [N, d], dW [V, d], db [V]); gradients are sums of softmax - onehot
    terms in float32 (float64 for float64 input), None where not needed.
    """
    N, d = hidden.shape
    V = weight.shape[0]
    need_h, need_w, need_b = needs
    accumulator = accumulator_dtype(hidden.dtype)
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
        z = mm_into(logits[: stop - start], h, weight.T)
        g = grad_logits[: stop - start] if grad_logits is not None else None
        cross_entropy_rows(z, bias, labels[start:stop], ignore_index, row_loss[start:stop], g)
        if need_h:
            mm_into(grad_h[start:stop], g, weight)
        if need_w:
            addmm_into(grad_w, g.T, h)
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
    accumulator = accumulator_dtype(hidden.dtype)
    z = mm_into(torch.empty(G * K, V, dtype=accumulator, device=hidden.device), h_answer, weight.T)
    if bias is not None:
        z += bias
    with torch.enable_grad():
        z = z.view(G, K, V).requires_grad_(need_grad)
        kl = pairwise_sym_kl(z, valid, temperature=temperature, backend=kl_backend)
        grad_z = torch.autograd.grad(kl, z)[0].view(G * K, V) if need_grad else None
    return kl.detach(), grad_z, h_answer, rows


def _cross_entropy_kernel():
    from mcckd.ops.cross_entropy import _cross_entropy_kernel

    return _cross_entropy_kernel


def _cross_entropy_rows_triton():
    from mcckd.ops.cross_entropy import cross_entropy_rows_triton

    return cross_entropy_rows_triton


class FusedLinearMCCFunction(torch.autograd.Function):
    """(ce, kl) of hidden, weight and bias; gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, answer_index, answer_valid, temperature, ignore_index,
                chunk_size, backend, kl_backend):
        needs = tuple(ctx.needs_input_grad[:3])
        operand_dtype = matmul.operand_dtype(hidden)
        hidden_op, weight_op = hidden.to(operand_dtype), weight.to(operand_dtype)
        if chunk_size is None:
            chunk_size = _auto_chunk_size(hidden.shape[0], weight.shape[0], operand_dtype, hidden.device)
        rows_fn = _cross_entropy_rows_triton() if backend == "triton" else cross_entropy_rows_torch
        if backend == "native":
            from mcckd.ops.cross_entropy_native import cross_entropy_rows_native as rows_fn
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
            answer_rows = mm_into(grad_h.new_empty(rows.shape[0], grad_h.shape[1]), grad_answer_op, weight_op)
            out_h = grad_h.index_add_(0, rows, answer_rows).to(hidden_dtype)
        if grad_w is not None:
            out_w = addmm_into(grad_w.mul_(coef_ce), grad_answer_op.T, h_answer).to(weight_dtype)
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
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(f"alpha must be a finite real number >= 0, got {alpha!r}")
    if not _is_int(ignore_index):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if chunk_size is not None and not (_is_int(chunk_size) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    check_positive_finite("temperature", temperature)
    check_choice("backend", backend, OP_BACKENDS)


def _check_tensors(hidden, weight, labels, answer_index, answer_valid, bias):
    check_tensor("hidden", hidden, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    N, d = hidden.shape
    if N < 1 or d < 1:
        raise ValueError(f"hidden must have shape [N, d] with N >= 1 and d >= 1, got {tuple(hidden.shape)}")
    device = hidden.device
    check_tensor("weight", weight, ndim=2, dtypes=(hidden.dtype,), device=device)
    V = weight.shape[0]
    if V < 1 or weight.shape[1] != d:
        raise ValueError(
            f"weight must have shape [V, {d}] with V >= 1 (d from hidden), got {tuple(weight.shape)}"
        )
    check_tensor("labels", labels, ndim=1, dtypes=INDEX_DTYPES, device=device)
    check_shape("labels", labels, (N,))
    check_tensor("answer_index", answer_index, ndim=2, dtypes=INDEX_DTYPES, device=device)
    G, K = answer_index.shape
    if G < 1 or K < 2:
        raise ValueError(
            f"answer_index must have shape [G, K] with G >= 1 and K >= 2, got {tuple(answer_index.shape)}"
        )
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


def fused_linear_mcc_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    answer_index: torch.Tensor,
    *,
    answer_valid: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> LinearMCCOutput:
    """MCC-KD loss of packed tokens without their [N, V] logits: CE + alpha * consistency KL.

    Args:
        hidden: the final hidden states of N packed tokens (before the lm_head).
        weight, bias: the lm_head, in hidden's dtype; bias may be None.
        labels: the target of each position; ignore_index where there is none.
        answer_index: for each of G answer tokens, the positions whose logits predict it under
            each of K rationales; -1 where a rationale is missing.
        answer_valid: which rows of answer_index take part (None: those >= 0).
        alpha: the weight of the consistency term (0: plain CE).
        temperature: of the consistency term's distributions.
        chunk_size: tokens per logits tile (None: chosen for the device and V).
        backend: "auto", "triton", "torch" or "native" (`mcckd.ops.backends`).

    Shapes:
        hidden [N, d] float32, bfloat16 or float16 (float64 with backends "torch", "native");
        weight [V, d]; bias [V]; labels [N] int64/int32; answer_index [G, K] int64/int32;
        answer_valid [G, K] bool.

    Returns:
        LinearMCCOutput(loss, ce, kl) of float32 scalars: ce the mean over targets (0 when
        there are none), kl the mean over groups with >= 2 valid rows of `pairwise_sym_kl`.
        Gradients flow to hidden, weight and bias.
    """
    _check_scalars(alpha, ignore_index, chunk_size, temperature, backend)
    _check_tensors(hidden, weight, labels, answer_index, answer_valid, bias)
    ce_backend = resolve_backend(backend, hidden, _cross_entropy_kernel, name="hidden")
    kl_backend = resolve_backend(
        backend, hidden, _cross_entropy_kernel, name="answer_index", k=answer_index.shape[1]
    )
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

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0, ignore_index: int = -100,
                 chunk_size: int | None = None, backend: str = "auto"):
        super().__init__()
        _check_scalars(alpha, ignore_index, chunk_size, temperature, backend)
        self.alpha, self.temperature, self.ignore_index = alpha, temperature, ignore_index
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                answer_index: torch.Tensor, answer_valid: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> LinearMCCOutput:
        if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
            raise ValueError(
                f"hidden must be a tensor [..., d], got {getattr(hidden, 'shape', type(hidden).__name__)}"
            )
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
