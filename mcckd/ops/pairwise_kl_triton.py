"""Triton kernels of `pairwise_sym_kl`: the forward (with a split-vocabulary merge), the
reduction over groups, the backward, their launchers and the autograd Function around them.

The math they compute is derived in `mcckd/ops/pairwise_kl.py`.

Forward, one read of the logits: a program walks the vocabulary in [K, BLOCK_V] tiles and
keeps per row the running max m_i, d_i = sum_v e_iv with e_iv = exp(y_iv - m_i), and
C_i = sum_v e_iv w_iv, where w_iv = (y_iv - m_i) - mean_j (y_jv - m_j) is a centred, shifted
logit: O(difference between the rows), never O(logit), so near-identical rows keep their
precision. When the maxima grow by delta_i, every w_i moves by -(delta_i - mean_j delta_j),
so C_i <- exp(-delta_i) (C_i - (delta_i - mean delta) d_i); that happens in the first tiles
and rarely after, so it sits behind a branch. d and C are accumulated per column slot
[K, BLOCK_V] and summed once at the end: the loop's only reduction across threads is the max.
A tile keeps all K rows of a column in one thread (BLOCK_V >= 32 lanes x 16-byte vectors x
warps), so the sums over rows never leave the thread. At the end
c_i = C_i / d_i - (log d_i - mean_j log d_j), m_i and log d_i are saved (not their sum, the
log-sum-exp: with logits of 1e4 it would round off log d_i). With few
groups the vocabulary is split across programs and the partial (m, d, C) are merged the same
way by a second small kernel.

Backward, one read of the logits and one write of the gradient: p and l - lbar are rebuilt
as l_i = (y_i - m_i) - log d_i, and the gradient formula above is applied tile by tile. The
reduction over groups is a one-program kernel, and the backward derives each group's
coefficient itself: a call costs its kernel launches and nothing else on the host.
All arithmetic is float32; offsets are int64. Logits below -1e30 (masked, padded, -inf)
are read as -1e30, so every value stays finite and p = 0 there needs no select.
"""
import dataclasses

import torch
import triton
import triton.language as tl

from mcckd.ops.launch import target_programs

# The floor of every logit and the initial running max: finite, so differences stay finite
# and exp(floor - max) = 0 once a real value has been seen.
_FLOOR = tl.constexpr(-1e30)


@triton.jit
def _load_tile(x_ptr, g, rows, valid, cols, col_limit, stride_g, stride_k):
    """x [K_PAD, BLOCK_V] as stored; -inf outside valid rows and columns (nothing is read)."""
    offsets = g * stride_g + rows.to(tl.int64)[:, None] * stride_k + cols[None, :]
    mask = valid[:, None] & (cols < col_limit)[None, :]
    return tl.load(x_ptr + offsets, mask=mask, other=float("-inf"))


@triton.jit
def _scaled(x, inv_t):
    """y = max(x / T, -1e30) in float32."""
    return tl.maximum(x.to(tl.float32) * inv_t, _FLOOR)


@triton.jit
def _centre(x, row_mask, pivot_mask, n, AXIS: tl.constexpr):
    """x minus its mean over the valid rows (along AXIS; masks broadcast against x).

    Computed as (x - x_pivot) - mean(x - x_pivot), around the first valid row: rows that are
    nearly equal give differences that are exact in float32, so the small centred value keeps
    its precision.
    """
    diff = x - tl.sum(tl.where(pivot_mask, x, 0.0), axis=AXIS, keep_dims=True)
    return diff - tl.sum(tl.where(row_mask, diff, 0.0), axis=AXIS, keep_dims=True) / n


@triton.jit
def _row_stats_of(x_ptr, g, rows, valid, is_pivot, n, col_start, col_end, V, stride_g, stride_k, inv_t,
                  K_PAD: tl.constexpr, BLOCK_V: tl.constexpr):
    """Online (m, d, C) per row over columns [col_start, col_end) of group g."""
    m = tl.full([K_PAD], _FLOOR, tl.float32)
    d = tl.zeros([K_PAD, BLOCK_V], tl.float32)
    c = tl.zeros([K_PAD, BLOCK_V], tl.float32)
    # The next tile's load is issued before this tile's arithmetic, so it is in flight meanwhile.
    x_next = _load_tile(x_ptr, g, rows, valid, col_start + tl.arange(0, BLOCK_V), col_end, stride_g, stride_k)
    for v0 in range(col_start, col_end, BLOCK_V):
        x = x_next
        x_next = _load_tile(
            x_ptr, g, rows, valid, v0 + BLOCK_V + tl.arange(0, BLOCK_V), col_end, stride_g, stride_k
        )
        y = _scaled(x, inv_t)
        m_new = tl.maximum(m, tl.max(y, axis=1))
        if tl.max(m_new - m, axis=0) > 0.0:
            delta = m_new - m
            scale = tl.exp(-delta)[:, None]
            c = scale * (c - _centre(delta, valid, is_pivot, n, 0)[:, None] * d)
            d = scale * d
            m = m_new
        u = y - m[:, None]
        e = tl.exp(u)
        c += e * _centre(u, valid[:, None], is_pivot[:, None], n, 0)
        d += e
    return m, tl.sum(d, axis=1), tl.sum(c, axis=1)


@triton.jit
def _finish_group(g, rows, row_in, valid, is_pivot, m, d, c, stats_ptr, loss_ptr, G, K):
    """From final (m, d, C): store stats [3, G, K] = (m_i, log d_i, c_i) and the group
    loss S / (n (n - 1))."""
    n_true = tl.sum(valid.to(tl.float32), axis=0)
    n = tl.maximum(n_true, 1.0)
    log_d = tl.log(d)
    c_over_d = tl.where(valid, c / d, 0.0)
    centred = c_over_d - _centre(log_d, valid, is_pivot, n, 0)
    s = n * tl.sum(c_over_d, axis=0)
    pairs = n_true * (n_true - 1.0)
    loss = tl.where(pairs > 0.0, s / tl.maximum(pairs, 1.0), 0.0)
    row_ptr = stats_ptr + g * K + rows
    tl.store(row_ptr, m, mask=row_in)
    tl.store(row_ptr + G * K, log_d, mask=row_in)
    tl.store(row_ptr + 2 * G * K, centred, mask=row_in)
    tl.store(loss_ptr + g, loss)


@triton.jit
def _rows_of_group(valid_ptr, g, K, K_PAD: tl.constexpr, HAS_VALID: tl.constexpr):
    """Row indices, rows < K, the valid mask, the pivot row (the first valid one) and
    max(count of valid rows, 1) for group g."""
    rows = tl.arange(0, K_PAD)
    row_in = rows < K
    if HAS_VALID:
        valid = (tl.load(valid_ptr + g * K + rows, mask=row_in, other=0) != 0) & row_in
    else:
        valid = row_in
    is_pivot = rows == tl.min(tl.where(valid, rows, K_PAD), axis=0)
    n = tl.maximum(tl.sum(valid.to(tl.float32), axis=0), 1.0)
    return rows, row_in, valid, is_pivot, n


@triton.jit
def _pairwise_kl_fwd_kernel(
    x_ptr, valid_ptr, stats_ptr, loss_ptr, part_ptr,
    G, K, V, stride_g, stride_k, cols_per_split, inv_t,
    K_PAD: tl.constexpr, BLOCK_V: tl.constexpr, HAS_VALID: tl.constexpr, SPLIT: tl.constexpr,
):
    """Program (g, s): stats of group g over split s; finishes the group when unsplit.

    part [G, num_splits, 3, K_PAD] receives (m, d, C) when SPLIT.
    """
    g = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64)
    rows, row_in, valid, is_pivot, n = _rows_of_group(valid_ptr, g, K, K_PAD, HAS_VALID)
    col_start = s * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, V)
    m, d, c = _row_stats_of(x_ptr, g, rows, valid, is_pivot, n, col_start, col_end, V, stride_g, stride_k,
                            inv_t, K_PAD, BLOCK_V)
    if SPLIT:
        base = part_ptr + (g * tl.num_programs(1) + s) * 3 * K_PAD
        tl.store(base + rows, m)
        tl.store(base + K_PAD + rows, d)
        tl.store(base + 2 * K_PAD + rows, c)
    else:
        _finish_group(g, rows, row_in, valid, is_pivot, m, d, c, stats_ptr, loss_ptr, G, K)


@triton.jit
def _pairwise_kl_merge_kernel(
    part_ptr, valid_ptr, stats_ptr, loss_ptr, G, K, num_splits,
    K_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """Program g: merge the per-split (m, d, C) of group g, then finish it.

    With M_i = max_s m_si and delta_si = M_i - m_si:
    C_i = sum_s exp(-delta_si) (C_si - (delta_si - mean_j delta_sj) d_si), d_i likewise.
    """
    g = tl.program_id(0).to(tl.int64)
    rows, row_in, valid, is_pivot, n = _rows_of_group(valid_ptr, g, K, K_PAD, HAS_VALID)
    splits = tl.arange(0, SPLITS_PAD)
    base = part_ptr + g * num_splits * 3 * K_PAD + splits[:, None] * 3 * K_PAD + rows[None, :]
    split_in = (splits < num_splits)[:, None]
    m_s = tl.load(base, mask=split_in, other=_FLOOR)
    d_s = tl.load(base + K_PAD, mask=split_in, other=0.0)
    c_s = tl.load(base + 2 * K_PAD, mask=split_in, other=0.0)
    m = tl.max(m_s, axis=0)
    delta = m[None, :] - m_s
    scale = tl.exp(-delta)
    c = tl.sum(scale * (c_s - _centre(delta, valid[None, :], is_pivot[None, :], n, 1) * d_s), axis=0)
    d = tl.sum(scale * d_s, axis=0)
    _finish_group(g, rows, row_in, valid, is_pivot, m, d, c, stats_ptr, loss_ptr, G, K)


@triton.jit
def _pairwise_kl_reduce_kernel(
    loss_ptr, valid_ptr, out_ptr, scale_ptr, G, K,
    K_PAD: tl.constexpr, BLOCK_G: tl.constexpr, HAS_VALID: tl.constexpr, MEAN: tl.constexpr,
):
    """One program: out = scale * sum_g L_g and scale_ptr = scale, where scale is 1 / (number
    of groups with two or more valid rows, at least 1) for MEAN, else 1."""
    total = tl.zeros([BLOCK_G], tl.float32)
    groups_with_pairs = tl.zeros([BLOCK_G], tl.float32)
    rows = tl.arange(0, K_PAD)
    for g0 in range(0, G, BLOCK_G):
        groups = g0 + tl.arange(0, BLOCK_G)
        group_in = groups < G
        total += tl.load(loss_ptr + groups, mask=group_in, other=0.0)
        if HAS_VALID:
            mask = group_in[:, None] & (rows < K)[None, :]
            n = tl.sum(
                tl.load(valid_ptr + groups.to(tl.int64)[:, None] * K + rows[None, :], mask=mask, other=0).to(
                    tl.float32
                ),
                axis=1,
            )
        else:
            n = tl.where(group_in, K * 1.0, 0.0)
        groups_with_pairs += tl.where(n >= 2.0, 1.0, 0.0)
    if MEAN:
        scale = 1.0 / tl.maximum(tl.sum(groups_with_pairs, axis=0), 1.0)
    else:
        scale = 1.0
    tl.store(out_ptr, tl.sum(total, axis=0) * scale)
    tl.store(scale_ptr, scale)


@triton.jit
def _pairwise_kl_bwd_kernel(
    x_ptr, valid_ptr, stats_ptr, grad_out_ptr, scale_ptr, grad_ptr,
    G, K, V, stride_g, stride_k, stride_grad_out, inv_t,
    K_PAD: tl.constexpr, BLOCK_V: tl.constexpr, HAS_VALID: tl.constexpr, REDUCED: tl.constexpr,
):
    """Program (g, b): grad of columns block b of group g.

    grad_i = coef * (n p_i (1 + (l_i - lbar) - c_i) - P) on valid rows, 0 elsewhere, with
    coef = dLoss/dL_g / (n (n - 1) T): dLoss/dL_g is grad_out[g] or, REDUCED, grad_out[0] * scale[0].
    """
    g = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    rows, row_in, valid, is_pivot, n = _rows_of_group(valid_ptr, g, K, K_PAD, HAS_VALID)
    if REDUCED:
        grad_group = tl.load(grad_out_ptr) * tl.load(scale_ptr)
    else:
        grad_group = tl.load(grad_out_ptr + g * stride_grad_out)
    pairs = n * (n - 1.0)
    coef = tl.where(pairs > 0.0, grad_group.to(tl.float32) * inv_t / tl.maximum(pairs, 1.0), 0.0)
    y = _scaled(_load_tile(x_ptr, g, rows, valid, cols, V, stride_g, stride_k), inv_t)
    row_ptr = stats_ptr + g * K + rows
    row_max = tl.load(row_ptr, mask=valid, other=0.0)
    log_sum = tl.load(row_ptr + G * K, mask=valid, other=0.0)
    centred_mean = tl.load(row_ptr + 2 * G * K, mask=valid, other=0.0)
    logp = (y - row_max[:, None]) - log_sum[:, None]
    p = tl.exp(logp)
    total_p = tl.sum(p, axis=0)
    centred = _centre(logp, valid[:, None], is_pivot[:, None], n, 0)
    own = n * p * (1.0 + centred - centred_mean[:, None])
    grad = tl.where(valid[:, None], coef * (own - total_p[None, :]), 0.0)
    offsets = g * stride_g + rows.to(tl.int64)[:, None] * stride_k + cols[None, :]
    out_mask = row_in[:, None] & (cols < V)[None, :]
    tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=out_mask)


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Tiles of up to `tile_values` logits (K_PAD x BLOCK_V) with at most `values_per_thread`
    of them in each thread (the forward keeps two float32 accumulators of the tile's shape),
    at most `max_warps` warps, and for the forward, splits of the vocabulary until there are
    `programs_per_sm` programs per multiprocessor. bench/tune_pairwise_kl.py measures them."""

    tile_values: int = 4096
    values_per_thread: int = 32
    max_warps: int = 4
    programs_per_sm: int = 4

    def num_warps(self, block_v, element_size):
        """Warps that keep every row of a column in one thread: Triton lays 16-byte vectors
        along the columns, 32 lanes a warp, and puts any further warps across the rows."""
        columns_per_warp = 32 * 16 // element_size
        return max(1, min(self.max_warps, block_v // columns_per_warp))

    def block_v(self, k_pad, V, element_size):
        block_v = max(16, min(self.tile_values // k_pad, triton.next_power_of_2(V)))
        while (
            block_v > 16
            and k_pad * block_v > 32 * self.num_warps(block_v, element_size) * self.values_per_thread
        ):
            block_v //= 2
        return block_v


FORWARD_CONFIG = LaunchConfig(tile_values=4096, values_per_thread=32, max_warps=4)
BACKWARD_CONFIG = LaunchConfig(tile_values=8192, values_per_thread=64, max_warps=4)


def _num_splits(G, V, block_v, device, programs_per_sm):
    """Split the vocabulary over programs when the groups alone would leave the GPU idle."""
    blocks = triton.cdiv(V, block_v)
    return max(1, min(triton.cdiv(target_programs(device, programs_per_sm), G), blocks, 64))


def pairwise_kl_forward(logits, valid, inv_t, num_splits=None, config=FORWARD_CONFIG):
    """Launch the forward: returns (group_loss [G], stats [3, G, K] = (m, log d, c)), float32."""
    G, K, V = logits.shape
    k_pad = triton.next_power_of_2(K)
    block_v = config.block_v(k_pad, V, logits.element_size())
    if num_splits is None:
        num_splits = _num_splits(G, V, block_v, logits.device, config.programs_per_sm)
    cols_per_split = triton.cdiv(triton.cdiv(V, num_splits), block_v) * block_v
    num_splits = triton.cdiv(V, cols_per_split)
    f32 = dict(dtype=torch.float32, device=logits.device)
    stats = torch.empty(3, G, K, **f32)
    group_loss = torch.empty(G, **f32)
    split = num_splits > 1
    partials = torch.empty(G, num_splits, 3, k_pad, **f32) if split else group_loss
    has_valid = valid is not None
    valid_arg = valid if has_valid else group_loss
    _pairwise_kl_fwd_kernel[(G, num_splits)](
        logits, valid_arg, stats, group_loss, partials,
        G, K, V, logits.stride(0), logits.stride(1), cols_per_split, inv_t,
        K_PAD=k_pad, BLOCK_V=block_v, HAS_VALID=has_valid, SPLIT=split,
        num_warps=config.num_warps(block_v, logits.element_size()),
    )
    if split:
        _pairwise_kl_merge_kernel[(G,)](
            partials, valid_arg, stats, group_loss, G, K, num_splits,
            K_PAD=k_pad, SPLITS_PAD=triton.next_power_of_2(num_splits), HAS_VALID=has_valid,
        )
    return group_loss, stats


def reduce_group_loss(group_loss, valid, K, mean):
    """(loss, scale): loss = scale * sum of group_loss [G], scale = 1 / (groups with pairs) for
    `mean`, else 1; both float32 scalars computed on the device, in one launch."""
    G = group_loss.shape[0]
    out = torch.empty(2, dtype=torch.float32, device=group_loss.device)
    k_pad = triton.next_power_of_2(K)
    _pairwise_kl_reduce_kernel[(1,)](
        group_loss, valid if valid is not None else group_loss, out[0:], out[1:], G, K,
        K_PAD=k_pad, BLOCK_G=max(16, min(1024, 4096 // k_pad)), HAS_VALID=valid is not None, MEAN=mean,
    )
    return out[0], out[1:]


def pairwise_kl_backward(logits, valid, inv_t, stats, grad_output, scale=None, config=BACKWARD_CONFIG):
    """Launch the backward: gradient [G, K, V] in logits' dtype. grad_output is dLoss/dL_g [G]
    (per group), or with `scale` a scalar: dLoss/dL_g = grad_output * scale[0]."""
    G, K, V = logits.shape
    k_pad = triton.next_power_of_2(K)
    block_v = config.block_v(k_pad, V, logits.element_size())
    grad = torch.empty(G, K, V, dtype=logits.dtype, device=logits.device)
    has_valid = valid is not None
    reduced = scale is not None
    _pairwise_kl_bwd_kernel[(G, triton.cdiv(V, block_v))](
        logits, valid if has_valid else stats, stats, grad_output, scale if reduced else stats, grad,
        G, K, V, logits.stride(0), logits.stride(1), 0 if reduced else grad_output.stride(0), inv_t,
        K_PAD=k_pad, BLOCK_V=block_v, HAS_VALID=has_valid, REDUCED=reduced,
        num_warps=config.num_warps(block_v, logits.element_size()),
    )
    return grad


class PairwiseSymKLFunction(torch.autograd.Function):
    """Autograd wrapper around the Triton launches: the loss reduced as `reduction` says.

    Host work is the launches alone (forward: the stats kernel, the merge when the vocabulary
    is split, the reduction; backward: one kernel): no host sync, no small torch ops.
    """

    @staticmethod
    def forward(ctx, logits, valid, temperature, reduction="none", num_splits=None):
        inv_t = 1.0 / temperature
        group_loss, stats = pairwise_kl_forward(logits, valid, inv_t, num_splits)
        if reduction == "none":
            loss, scale = group_loss, None
        else:
            loss, scale = reduce_group_loss(group_loss, valid, logits.shape[1], mean=reduction == "mean")
        ctx.save_for_backward(logits, valid, stats, scale)
        ctx.inv_t = inv_t
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        logits, valid, stats, scale = ctx.saved_tensors
        grad = pairwise_kl_backward(logits, valid, ctx.inv_t, stats, grad_output.float(), scale)
        return grad, None, None, None, None
