"""The forward and backward of `fused_linear_mcc_loss` (math in `linear_mcc.py`), as plain
functions of tensors: `registration.py` wraps them in one torch.library op per backend.

fused_forward runs the chunked lm_head + cross-entropy and the answer rows' consistency term
and returns the loss terms with their unscaled gradients; fused_backward scales those by the
incoming gradients and adds the answer rows' part.
"""
import torch

from mcckd.ops.matmul import accumulator_dtype, addmm_into, mm_into, operand_dtype

# Chunk policy (_auto_chunk_size): a memory budget for the logits tile and its gradient, and a
# floor on the rows per chunk. dW += D^T h reads and writes the float32 dW (8 V d bytes) for
# 2 C V d FLOPs: C >= 1024 keeps it near or above the H100/H200 ridge (~200-300 FLOP/byte),
# and 1024 CE programs fill 132 SMs several times over. Liger's chunks (BT / ceil(V / d), 512
# rows for V = 128256) sit below it.
_CUDA_CHUNK_BUDGET = 1 << 30
_CUDA_MIN_CHUNK = 1024
_CPU_CHUNK_BUDGET = 64 << 20
_CPU_MIN_CHUNK = 64


def _auto_chunk_size(N, V, operand, device):
    """Tokens per chunk: the float32 logits tile and its gradient in the operand dtype fill
    a budget (1 GiB on CUDA, 64 MiB elsewhere) but the chunk never drops below the rows that
    keep the GEMMs efficient; chunks are made equal so no small one trails."""
    accumulator = accumulator_dtype(operand)
    bytes_per_row = V * (accumulator.itemsize + (operand.itemsize if operand != accumulator else 0))
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


def _answer_rows(answer_index, answer_valid):
    """(token positions [G*K] (missing rows point at token 0), valid [G, K])."""
    valid = answer_index >= 0
    if answer_valid is not None:
        valid = valid & answer_valid
    return answer_index.clamp(min=0).reshape(-1), valid


def _consistency(hidden, weight, bias, answer_index, answer_valid, temperature, pairwise_kernels, need_grad):
    """KL of the answer rows (the mean over groups with pairs) and dKL/dZ [G*K, V] (None
    unless need_grad); pairwise_kernels = the (forward, backward) ops of `registration.py`."""
    G, K = answer_index.shape
    V = weight.shape[0]
    rows, valid = _answer_rows(answer_index, answer_valid)
    accumulator = accumulator_dtype(hidden.dtype)
    z = mm_into(torch.empty(G * K, V, dtype=accumulator, device=hidden.device), hidden.index_select(0, rows),
                weight.T)
    if bias is not None:
        z += bias
    if G == 0:
        return z.new_zeros(()), (z if need_grad else None)
    forward, backward = pairwise_kernels
    z = z.view(G, K, V)
    group_loss, stats = forward(z, valid, temperature)
    inv_groups = 1.0 / (valid.sum(dim=1) >= 2).sum().clamp(min=1).to(accumulator)
    kl = group_loss.to(accumulator).sum() * inv_groups
    if not need_grad:
        return kl, None
    grad_z = backward(inv_groups.expand(G).contiguous(), z, valid, group_loss, stats, temperature)
    return kl, grad_z.view(G * K, V)


def fused_forward(hidden, weight, bias, labels, answer_index, answer_valid, temperature, ignore_index,
                  chunk_size, cross_entropy_rows, pairwise_kernels, needs):
    """(ce, kl, dh [N, d], dW [V, d], db [V], dZ [G*K, V]): the loss terms and their unscaled
    gradients (the CE ones summed over tokens, not yet divided by n), float32 (float64 for
    float64 input); empty [0] where `needs` (hidden, weight, bias) says a gradient is not wanted."""
    operand = operand_dtype(hidden)
    hidden_op, weight_op = hidden.to(operand), weight.to(operand)
    if chunk_size is None:
        chunk_size = _auto_chunk_size(hidden.shape[0], weight.shape[0], operand, hidden.device)
    loss_sum, grad_h, grad_w, grad_b = _cross_entropy_chunks(
        hidden_op, weight_op, bias, labels, ignore_index, chunk_size, cross_entropy_rows, needs)
    kl, grad_z = _consistency(hidden_op, weight_op, bias, answer_index, answer_valid, temperature,
                              pairwise_kernels, any(needs))
    ce = loss_sum / _targets(labels, ignore_index).to(loss_sum.dtype)
    empty = loss_sum.new_empty(0)
    return tuple(t if t is not None else empty.clone() for t in (ce, kl, grad_h, grad_w, grad_b, grad_z))


def _targets(labels, ignore_index):
    """n: the labels that are not ignore_index, at least 1."""
    return (labels != ignore_index).sum().clamp(min=1)


def fused_backward(grad_ce, grad_kl, saved, hidden, weight, bias, labels, answer_index, ignore_index, needs):
    """(dLoss/dhidden, dLoss/dweight, dLoss/dbias) from the unscaled gradients `saved` =
    (dh, dW, db, dZ) of fused_forward, in the input dtypes (None where `needs` says not wanted).

    The saved buffers are updated in place: a second backward through the same graph raises
    autograd's "modified by an inplace operation" error instead of giving wrong values."""
    grad_h, grad_w, grad_b, grad_z = saved
    operand = operand_dtype(hidden)
    rows, _ = _answer_rows(answer_index, None)
    inv_n = 1.0 / _targets(labels, ignore_index).to(grad_z.dtype)
    coef_ce = grad_ce.to(grad_z.dtype) * inv_n
    grad_answer = grad_z * grad_kl.to(grad_z.dtype)  # [G*K, V] = dLoss/dZ of the answer rows
    grad_answer_op = grad_answer.to(operand)
    out_h = out_w = out_b = None
    if needs[0]:
        weight_op = weight.to(operand)
        answer_rows = mm_into(grad_h.new_empty(rows.shape[0], grad_h.shape[1]), grad_answer_op, weight_op)
        out_h = grad_h.mul_(coef_ce).index_add_(0, rows, answer_rows).to(hidden.dtype)
    if needs[1]:
        h_answer = hidden.to(operand).index_select(0, rows)
        out_w = addmm_into(grad_w.mul_(coef_ce), grad_answer_op.T, h_answer).to(weight.dtype)
    if needs[2]:
        out_b = grad_b.mul_(coef_ce).add_(grad_answer.sum(dim=0, dtype=grad_b.dtype)).to(bias.dtype)
    return out_h, out_w, out_b
