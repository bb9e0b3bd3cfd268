"""Triton kernels of `pairwise_sym_kl`: the forward (with a split-vocabulary merge), the
backward, their launchers and the autograd Function around them.

The math is docs/design.md's ("The consistency loss" and "Precision: differences to a pivot
row"); the pivot-difference terms are the device functions of `pairwise_kl_pivot.py`.

Forward, one read of the logits: a program walks the vocabulary in [K, BLOCK_V] tiles and
keeps per row the running maximum mx_i of the raw logits and the sums d_r, D_i, B_i, F_i,
each tile's added to them (four sums over columns a tile: per-column-slot sums would hold
three more [K, BLOCK_V] float32 arrays and spill registers). After each tile's maxima the sums
are rescaled exactly (`growth_factors`; the identity when no maximum grew). A tile keeps all
K rows of a column in one thread (BLOCK_V >= 32 lanes x 16-byte vectors x warps), so sums over
rows never leave the thread. The group's end turns the sums into the loss
and the stats the backward needs. With few groups the vocabulary is split across programs and
a second small kernel merges the partial sums with the same rescaling.

Backward, one read of the logits and one write of the gradient: each tile rebuilds e_r, b_i
and q~_i from the saved row maxima, then dS/dy from p_r, q_i and eps_i; each program derives
its group's coefficient itself, so a call costs its kernel launches and nothing else on the
host. Any strides and storage offsets, of the logits and of the valid mask; the gradient is
written contiguous; nothing outside a tensor is read or written. All arithmetic is float32.

Edge cases (docs/design.md, "Edge cases"): rows that are not valid are never read; a column
at -inf in every valid row contributes nothing; NaN or +inf in a valid row reaches every sum
of the group (a NaN loss and NaN stats, hence NaN gradients on its valid rows); -inf in some
valid rows of a column but not all is flagged: a +inf loss and NaN stats; G = 0 launches
nothing.

Precision measured under the interpreter (tests/ops/test_pairwise_kl_precision.py, G = 3,
K = 4, V = 8269, T = 1 and 0.7, logit scales 1 and 30), float32 logits, rows at distance eps
around a shared row, largest relative error against float64 on the same inputs (per group,
the gradient's normalised by its largest entry): eps = 1e-3: loss 9.2e-7, gradient 1.4e-6;
1e-4: 9.6e-7, 8.0e-7; 1e-5: 2.2e-6, 2.1e-6. Rows also shifted by per-row constants of ~30:
1.3e-7 and 4.0e-7. Rows far apart at T != 1 (|x_i - x_j| / T >> 1) keep the gradient to a few
float32 ulps of |x| / T, absolutely: 2.7e-3 relative for float16 logits up to 3.3e4, T = 1.3.
"""
import dataclasses

import torch
import triton
import triton.language as tl

from mcckd.ops.launch import launchable, target_programs, valid_mask_args
from mcckd.ops.pairwise_kl_pivot import (
    FLOOR,
    column_terms,
    growth_factors,
    invalid_rows_as_pivot,
    mixed_minus_inf,
    pivot_of,
    rescaled,
    row_terms,
    score_gradient,
)

# stats [STATS_ROWS, G, K] = (mx_i, 1 / d_r, rho_i, mean_b_i);
# partial sums [G, splits, PARTIAL_ROWS, K_PAD] = (mx_i, d_r, D_i, B_i, F_i, C_i, mixed).
STATS_ROWS = 4
PARTIAL_ROWS = tl.constexpr(7)


@triton.jit
def _load_tile(x_ptr, g, rows, valid, cols, col_limit, stride_g, stride_k, stride_v):
    """x [K_PAD, BLOCK_V] float32 as stored; -inf outside valid rows and columns (not read)."""
    offsets = g * stride_g + rows.to(tl.int64)[:, None] * stride_k + cols.to(tl.int64)[None, :] * stride_v
    mask = valid[:, None] & (cols < col_limit)[None, :]
    return tl.load(x_ptr + offsets, mask=mask, other=float("-inf")).to(tl.float32)


@triton.jit
def _rows_of_group(valid_ptr, g, K, stride_valid_g, stride_valid_k, K_PAD: tl.constexpr,
                   HAS_VALID: tl.constexpr):
    """Row indices, rows < K, the valid mask, the pivot row (the first valid one),
    n = max(k, 1) as float and k, the count of valid rows, for group g."""
    rows = tl.arange(0, K_PAD)
    row_in = rows < K
    if HAS_VALID:
        offsets = g * stride_valid_g + rows.to(tl.int64) * stride_valid_k
        valid = (tl.load(valid_ptr + offsets, mask=row_in, other=0) != 0) & row_in
    else:
        valid = row_in
    is_pivot = rows == tl.min(tl.where(valid, rows, K_PAD), axis=0)
    n_true = tl.sum(valid.to(tl.int32), axis=0)
    return rows, row_in, valid, is_pivot, tl.maximum(n_true, 1).to(tl.float32), n_true


@triton.jit
def _row_sums(x_ptr, g, rows, valid, is_pivot, n, n_true, col_start, col_end, stride_g, stride_k, stride_v,
              inv_t, K_PAD: tl.constexpr, BLOCK_V: tl.constexpr):
    """(mx, d_r, D, B, F, C, mixed) of group g over columns [col_start, col_end), in one read."""
    mx = tl.full([K_PAD], FLOOR, tl.float32)
    d_r = tl.zeros([1], tl.float32)
    D = tl.zeros([K_PAD], tl.float32)
    B = tl.zeros([K_PAD], tl.float32)
    F = tl.zeros([K_PAD], tl.float32)
    C = tl.zeros([K_PAD], tl.float32)
    mixed = tl.zeros([BLOCK_V], tl.int32)
    # The next tile's load is issued before this tile's arithmetic, so it is in flight meanwhile.
    x_next = _load_tile(x_ptr, g, rows, valid, col_start + tl.arange(0, BLOCK_V), col_end,
                        stride_g, stride_k, stride_v)
    for v0 in range(col_start, col_end, BLOCK_V):
        x = invalid_rows_as_pivot(x_next, valid, is_pivot)
        x_next = _load_tile(x_ptr, g, rows, valid, v0 + BLOCK_V + tl.arange(0, BLOCK_V), col_end,
                            stride_g, stride_k, stride_v)
        mixed = tl.maximum(mixed, mixed_minus_inf(x, valid, n_true))
        mx_new = tl.maximum(mx, tl.max(x, axis=1))
        s, s_r, gap, beta = growth_factors(mx, mx_new, is_pivot, n, inv_t, 0)
        d_r, D, B, F, C = rescaled(d_r, D, B, F, C, s, s_r, gap, beta)
        mx = mx_new
        e_r, e, b, q = column_terms(x, mx, is_pivot, n, inv_t)
        d_r += tl.sum(e_r, axis=1)
        D += tl.sum(q, axis=1)
        B += tl.sum(e_r * b, axis=1)
        F += tl.sum(q * b, axis=1)
        C += tl.sum(e * b, axis=1)
    return mx, tl.sum(d_r, axis=0), D, B, F, C, tl.max(mixed, axis=0)


@triton.jit
def _finish_group(g, rows, row_in, valid, n, n_true, mx, d_r, D, B, F, C, mixed, stats_ptr, plane, loss_ptr,
                  K):
    """Store the stats of group g and its loss S / (k (k - 1)) (0 for k < 2); a group with pairs
    and a mixed -inf column gets a +inf loss and NaN stats."""
    s, rho, mean_b = row_terms(d_r, D, B, F, C, valid, n)
    pairs = (n_true * (n_true - 1)).to(tl.float32)
    loss = tl.where(pairs > 0.0, s / tl.maximum(pairs, 1.0), 0.0)
    bad = (mixed > 0) & (pairs > 0.0)
    loss = tl.where(bad, float("inf"), loss)
    keep = tl.where(bad, float("nan"), 1.0)
    row_ptr = stats_ptr + g * K + rows
    tl.store(row_ptr, mx * keep, mask=row_in)
    tl.store(row_ptr + plane, tl.zeros_like(rho) + keep / d_r, mask=row_in)
    tl.store(row_ptr + 2 * plane, rho * keep, mask=row_in)
    tl.store(row_ptr + 3 * plane, mean_b * keep, mask=row_in)
    tl.store(loss_ptr + g, loss)


@triton.jit
def _pairwise_kl_fwd_kernel(
    x_ptr, valid_ptr, stats_ptr, loss_ptr, part_ptr,
    K, V, stride_g, stride_k, stride_v, stride_valid_g, stride_valid_k, cols_per_split, stride_stats, inv_t,
    K_PAD: tl.constexpr, BLOCK_V: tl.constexpr, HAS_VALID: tl.constexpr, SPLIT: tl.constexpr,
):
    """Program (g, s): the sums of group g over split s; finishes the group when unsplit,
    else stores them in part [G, num_splits, PARTIAL_ROWS, K_PAD]."""
    g = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64)
    rows, row_in, valid, is_pivot, n, n_true = _rows_of_group(valid_ptr, g, K, stride_valid_g, stride_valid_k,
                                                              K_PAD, HAS_VALID)
    col_start = s * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, V)
    mx, d_r, D, B, F, C, mixed = _row_sums(x_ptr, g, rows, valid, is_pivot, n, n_true, col_start, col_end,
                                         stride_g, stride_k, stride_v, inv_t, K_PAD, BLOCK_V)
    if SPLIT:
        base = part_ptr + (g * tl.num_programs(1) + s) * PARTIAL_ROWS * K_PAD + rows
        zeros = tl.zeros([K_PAD], tl.float32)
        tl.store(base, mx)
        tl.store(base + K_PAD, zeros + d_r)
        tl.store(base + 2 * K_PAD, D)
        tl.store(base + 3 * K_PAD, B)
        tl.store(base + 4 * K_PAD, F)
        tl.store(base + 5 * K_PAD, C)
        tl.store(base + 6 * K_PAD, zeros + mixed.to(tl.float32))
    else:
        _finish_group(g, rows, row_in, valid, n, n_true, mx, d_r, D, B, F, C, mixed,
                      stats_ptr, stride_stats, loss_ptr, K)


@triton.jit
def _pairwise_kl_merge_kernel(
    part_ptr, valid_ptr, stats_ptr, loss_ptr, K, num_splits, stride_valid_g, stride_valid_k, stride_stats,
    inv_t,
    K_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """Program g: the partial sums of group g rescaled to the maxima over all splits and
    added, then the group finished."""
    g = tl.program_id(0).to(tl.int64)
    rows, row_in, valid, is_pivot, n, n_true = _rows_of_group(valid_ptr, g, K, stride_valid_g, stride_valid_k,
                                                              K_PAD, HAS_VALID)
    splits = tl.arange(0, SPLITS_PAD)
    base = part_ptr + (g * num_splits + splits[:, None]) * PARTIAL_ROWS * K_PAD + rows[None, :]
    split_in = (splits < num_splits)[:, None]
    mx_s = tl.load(base, mask=split_in, other=FLOOR)
    d_s = tl.load(base + K_PAD, mask=split_in, other=0.0)
    D_s = tl.load(base + 2 * K_PAD, mask=split_in, other=0.0)
    B_s = tl.load(base + 3 * K_PAD, mask=split_in, other=0.0)
    F_s = tl.load(base + 4 * K_PAD, mask=split_in, other=0.0)
    C_s = tl.load(base + 5 * K_PAD, mask=split_in, other=0.0)
    mixed = tl.max(tl.max(tl.load(base + 6 * K_PAD, mask=split_in, other=0.0), axis=1), axis=0).to(tl.int32)
    mx = tl.max(mx_s, axis=0)
    s, s_r, gap, beta = growth_factors(mx_s, mx[None, :], is_pivot[None, :], n, inv_t, 1)
    d_s, D_s, B_s, F_s, C_s = rescaled(d_s, D_s, B_s, F_s, C_s, s, s_r, gap, beta)
    d_r = tl.max(tl.sum(d_s, axis=0), axis=0)  # every row holds the same d_r
    _finish_group(g, rows, row_in, valid, n, n_true, mx, d_r, tl.sum(D_s, axis=0), tl.sum(B_s, axis=0),
                  tl.sum(F_s, axis=0), tl.sum(C_s, axis=0), mixed, stats_ptr, stride_stats, loss_ptr, K)


@triton.jit
def _pairwise_kl_bwd_kernel(
    x_ptr, valid_ptr, stats_ptr, grad_out_ptr, grad_ptr,
    K, V, stride_g, stride_k, stride_v, stride_valid_g, stride_valid_k, stride_grad_out,
    stride_grad_g, stride_grad_k, stride_stats, inv_t,
    K_PAD: tl.constexpr, BLOCK_V: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """Program (g, b): grad of columns block b of group g, coef * dS/dy on valid rows of groups
    with pairs, 0 elsewhere; coef = dLoss/dL_g / (k (k - 1) T), dLoss/dL_g = grad_out[g].
    grad [G, K, V] has strides (stride_grad_g, stride_grad_k, 1)."""
    g = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    rows, row_in, valid, is_pivot, n, n_true = _rows_of_group(valid_ptr, g, K, stride_valid_g, stride_valid_k,
                                                              K_PAD, HAS_VALID)
    grad_group = tl.load(grad_out_ptr + g * stride_grad_out)
    pairs = (n_true * (n_true - 1)).to(tl.float32)
    coef = grad_group.to(tl.float32) * inv_t / tl.maximum(pairs, 1.0)
    row_ptr = stats_ptr + g * K + rows
    mx = tl.load(row_ptr, mask=row_in, other=0.0)
    mx = tl.where(valid, mx, tl.sum(tl.where(is_pivot, mx, 0.0), axis=0))
    inv_d_r = tl.sum(pivot_of(tl.load(row_ptr + stride_stats, mask=row_in, other=0.0), is_pivot, 0), axis=0)
    rho = tl.load(row_ptr + 2 * stride_stats, mask=valid, other=0.0)
    mean_b = tl.load(row_ptr + 3 * stride_stats, mask=valid, other=0.0)
    x = _load_tile(x_ptr, g, rows, valid, cols, V, stride_g, stride_k, stride_v)
    e_r, e, b, q = column_terms(invalid_rows_as_pivot(x, valid, is_pivot), mx, is_pivot, n, inv_t)
    grad_s = score_gradient(e, b, q, e_r, inv_d_r, rho, mean_b, valid, n)
    grad = tl.where((valid & (n_true > 1))[:, None], coef * grad_s, 0.0)
    offsets = g * stride_grad_g + rows.to(tl.int64)[:, None] * stride_grad_k + cols[None, :]
    mask = row_in[:, None] & (cols < V)[None, :]
    tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=mask)


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Tiles of up to `tile_values` logits (K_PAD x BLOCK_V) with at most `values_per_thread`
    of them in each thread (every [K_PAD, BLOCK_V] float32 temporary costs that many registers),
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
BACKWARD_CONFIG = LaunchConfig(tile_values=8192, values_per_thread=32, max_warps=4)


def _num_splits(G, V, block_v, device, programs_per_sm):
    """Split the vocabulary over programs when the groups alone would leave the GPU idle."""
    blocks = triton.cdiv(V, block_v)
    return max(1, min(triton.cdiv(target_programs(device, programs_per_sm), G), blocks, 64))


def pairwise_kl_forward(logits, valid, inv_t, num_splits=None, config=FORWARD_CONFIG):
    """Launch the forward on logits [G, K, V] (any strides) and valid [G, K] bool or None.

    Returns (group_loss [G], stats [STATS_ROWS = 4, G, K]), float32; stats holds per row
    (mx_i the maximum of the raw logits, 1 / d_r, rho_i = d_i / d_r - 1, mean_b_i), all NaN
    in a group whose loss is NaN or +inf.
    """
    G, K, V = logits.shape
    f32 = dict(dtype=torch.float32, device=logits.device)
    stats = torch.empty(STATS_ROWS, G, K, **f32)
    group_loss = torch.empty(G, **f32)
    if G == 0:
        return group_loss, stats
    k_pad = triton.next_power_of_2(K)
    block_v = config.block_v(k_pad, V, logits.element_size())
    if num_splits is None:
        num_splits = _num_splits(G, V, block_v, logits.device, config.programs_per_sm)
    cols_per_split = triton.cdiv(triton.cdiv(V, num_splits), block_v) * block_v
    num_splits = triton.cdiv(V, cols_per_split)
    split = num_splits > 1
    partials = torch.empty(G, num_splits, PARTIAL_ROWS, k_pad, **f32) if split else group_loss
    valid_arg, stride_valid_g, stride_valid_k, has_valid = valid_mask_args(valid, group_loss)
    launchable(_pairwise_kl_fwd_kernel)[(G, num_splits)](
        logits, valid_arg, stats, group_loss, partials,
        K, V, *logits.stride(), stride_valid_g, stride_valid_k, cols_per_split, stats.stride(0), inv_t,
        K_PAD=k_pad, BLOCK_V=block_v, HAS_VALID=has_valid, SPLIT=split,
        num_warps=config.num_warps(block_v, logits.element_size()),
    )
    if split:
        launchable(_pairwise_kl_merge_kernel)[(G,)](
            partials, valid_arg, stats, group_loss, K, num_splits, stride_valid_g, stride_valid_k,
            stats.stride(0), inv_t,
            K_PAD=k_pad, SPLITS_PAD=triton.next_power_of_2(num_splits), HAS_VALID=has_valid,
        )
    return group_loss, stats


def pairwise_kl_backward(logits, valid, inv_t, stats, grad_output, config=BACKWARD_CONFIG):
    """Launch the backward: gradient [G, K, V], contiguous, in logits' dtype. logits (any
    strides) and valid as given to the forward, stats its output; grad_output is dLoss/dL_g [G],
    float32."""
    G, K, V = logits.shape
    grad = torch.empty(G, K, V, dtype=logits.dtype, device=logits.device)
    if G == 0:
        return grad
    k_pad = triton.next_power_of_2(K)
    block_v = config.block_v(k_pad, V, logits.element_size())
    valid_arg, stride_valid_g, stride_valid_k, has_valid = valid_mask_args(valid, stats)
    launchable(_pairwise_kl_bwd_kernel)[(G, triton.cdiv(V, block_v))](
        logits, valid_arg, stats, grad_output, grad,
        K, V, *logits.stride(), stride_valid_g, stride_valid_k, grad_output.stride(0),
        grad.stride(0), grad.stride(1), stats.stride(0), inv_t,
        K_PAD=k_pad, BLOCK_V=block_v, HAS_VALID=has_valid,
        num_warps=config.num_warps(block_v, logits.element_size()),
    )
    return grad


class PairwiseSymKLFunction(torch.autograd.Function):
    """Autograd over the Triton launches with the vocabulary split over `num_splits` programs
    (None: as the launcher picks): per-group losses [G]. The registered op picks the split
    itself; this entry lets the split paths be driven directly.

    Host work is the launches alone (forward: the stats kernel and, split, the merge;
    backward: one kernel): no host sync, no small torch ops.
    """

    @staticmethod
    def forward(ctx, logits, valid, temperature, num_splits=None):
        inv_t = 1.0 / temperature
        group_loss, stats = pairwise_kl_forward(logits, valid, inv_t, num_splits)
        ctx.save_for_backward(logits, valid, stats)
        ctx.inv_t = inv_t
        return group_loss

    @staticmethod
    def backward(ctx, grad_output):
        logits, valid, stats = ctx.saved_tensors
        grad = pairwise_kl_backward(logits, valid, ctx.inv_t, stats, grad_output.float())
        return grad, None, None, None
