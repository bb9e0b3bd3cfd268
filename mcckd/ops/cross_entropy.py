"""Cross-entropy rows of a logits tile: each row's loss, and softmax - onehot in place.

For row r with logits z_r [V] (+ bias) and target y_r:

    loss_r = lse(z_r) - z_r[y_r],   grad_r = softmax(z_r) - onehot(y_r)

both 0 on rows whose target is ignore_index. Two backends with one signature: a Triton kernel
(one program per row, an online log-sum-exp over [BLOCK_V] tiles, then a second read that
writes the gradient) and the same in PyTorch ops (`cross_entropy_torch.py`, the CPU path).
`linear_mcc.py` calls them on every chunk of tokens.
"""
import triton
import triton.language as tl

_MAX_BLOCK_V = 4096
# Below -1e30 the running max is "no finite value seen yet": finite, so deltas stay finite.
_NO_MAX = tl.constexpr(-1e30)


@triton.jit
def _load_logits(row_ptr, bias_ptr, cols, V, stride_col, stride_bias, active, HAS_BIAS: tl.constexpr):
    """z [BLOCK_V] float32 (+ bias); -inf outside [0, V) and on ignored rows (nothing is read)."""
    mask = cols < tl.where(active, V, 0)
    z = tl.load(row_ptr + cols.to(tl.int64) * stride_col, mask=mask, other=float("-inf")).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols.to(tl.int64) * stride_bias, mask=mask, other=0.0).to(tl.float32)
    return z


@triton.jit
def _cross_entropy_kernel(
    logits_ptr, bias_ptr, labels_ptr, loss_ptr, grad_ptr,
    V, stride_logits, stride_col, stride_bias, stride_grad, stride_grad_col, ignore_index,
    BLOCK_V: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GRAD: tl.constexpr,
):
    """Program r: loss_r = lse(z_r) - z_r[y_r] (0 when y_r = ignore_index) and, if HAS_GRAD,
    grad_r = softmax(z_r) - onehot(y_r) (0 on ignored rows). grad may alias the logits (same strides):
    each element is read before it is written, by the same thread. Any row and column strides.

    lse in one read: per tile, m' = max(m, max z), d = d exp(m - m') + sum exp(z - m').
    """
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row).to(tl.int64)
    active = label != ignore_index
    row_ptr = logits_ptr + row * stride_logits
    m = tl.full([], _NO_MAX, tl.float32)
    d = tl.zeros([], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = _load_logits(row_ptr, bias_ptr, cols, V, stride_col, stride_bias, active, HAS_BIAS)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(tl.where(active, d, 1.0))  # ignored rows: d = 0, and p = 0 below
    # Labels were validated; the mask only guarantees that no read leaves the row.
    has_target = active & (label >= 0) & (label < V)
    target_col = tl.where(has_target, label, 0)
    z_target = tl.load(row_ptr + target_col * stride_col, mask=has_target, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z_target += tl.load(bias_ptr + target_col * stride_bias, mask=has_target, other=0.0).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(active, lse - z_target, 0.0))
    if HAS_GRAD:
        grad_row = grad_ptr + row * stride_grad
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            z = _load_logits(row_ptr, bias_ptr, cols, V, stride_col, stride_bias, active, HAS_BIAS)
            p = tl.exp(z - lse)
            grad = tl.where(active, tl.where(cols == label, p - 1.0, p), 0.0)
            tl.store(grad_row + cols.to(tl.int64) * stride_grad_col, grad.to(grad_ptr.dtype.element_ty),
                     mask=cols < V)


def cross_entropy_rows_triton(logits, bias, labels, ignore_index, loss_out, grad_out):
    """Launch the CE kernel on logits [C, V] float32 (any strides; bias [V] or None): row losses
    into loss_out [C] float32 and, unless grad_out is None, softmax - onehot into grad_out [C, V]
    (any strides; may be logits itself)."""
    C, V = logits.shape
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(V))
    has_grad = grad_out is not None
    _cross_entropy_kernel[(C,)](
        logits, bias if bias is not None else logits, labels, loss_out, grad_out if has_grad else logits,
        V, *logits.stride(), bias.stride(0) if bias is not None else 0,
        *(grad_out.stride() if has_grad else (0, 0)), ignore_index,
        BLOCK_V=block_v, HAS_BIAS=bias is not None, HAS_GRAD=has_grad, num_warps=8 if block_v >= 2048 else 4,
    )
