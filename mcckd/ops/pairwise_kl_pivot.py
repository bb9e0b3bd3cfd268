"""Triton device functions of the pivot-difference formulation of `pairwise_sym_kl`
(docs/design.md, "Precision: differences to a pivot row"), shared by the kernels of
`pairwise_kl_triton.py`.

A group's rows lie along one axis: axis 0 of a [K_PAD, BLOCK_V] tile, axis 1 of the merge's
[splits, K_PAD]. r is the pivot row (the first valid one). Rows that are not valid hold copies
of the pivot's logits, so their differences to it are exactly 0 and a sum over all rows of a
difference is its sum over the valid rows. For raw logits x, running row maxima mx and
inv_t = 1 / T (k valid rows):

    delta_i = ((x_i - x_r) - (mx_i - mx_r)) / T      b_i = delta_i - mean_j delta_j
    e_r = exp((x_r - mx_r) / T)                      q~_i = e_i - e_r = e_r expm1(delta_i)
    d_r = sum_v e_r,  D_i = sum_v q~_i,  B_i = sum_v e_r b_i,  F_i = sum_v q~_i b_i,
    C_i = sum_v e_i b_i

The loss takes design.md's S = k sum_i (F_i - D_i B_i / d_r) / d_i. The gradient needs c_k only
in t_k = eps_k - c_k = (l_k - lbar) - <p_k, l_k - lbar> = b_k - C_k / d_k, in which the lambdas
cancel: C_k is summed directly (not as B_k + F_k), so where p_k is nearly one-hot t_k stays a
sum of small terms. When rows are far apart (|x_i - x_j| / T >> 1) b is as large as the logits
and t_k carries an absolute error of a few float32 ulps of it.
"""
import triton
import triton.language as tl

# The initial running maximum: the lowest float32, so every finite logit raises it and
# exp(-inf - max) = 0 for a row that has shown only -inf so far.
FLOOR = tl.constexpr(-3.4028234663852886e38)
# |delta| below which q~ = e_r expm1(delta) by the series, above which q~ = e_i - e_r.
SERIES_LIMIT = tl.constexpr(0.5)


@triton.jit
def expm1_series(x):
    """exp(x) - 1 for |x| <= 1/2 to float32 rounding: x (1 + x/2 (1 + x/3 (... (1 + x/9)))),
    whose remainder is below 1e-9 of the value."""
    r = 1.0 + x * (1.0 / 9.0)
    for k in tl.static_range(8, 1, -1):
        r = 1.0 + x * r * (1.0 / k)
    return x * r


@triton.jit
def two_diff(a, b):
    """(s, err): s = fl(a - b) and s + err = a - b exactly (Knuth's two-sum); (0, 0) where
    a == b, equal infinities included."""
    s = a - b
    b_part = s - a
    err = (a - (s - b_part)) - (b + b_part)
    same = a == b
    return tl.where(same, 0.0, s), tl.where(same, 0.0, err)


@triton.jit
def difference_of_differences(a, b, c, d):
    """(a - b) - (c - d) with a single rounding at the end."""
    s_ab, err_ab = two_diff(a, b)
    s_cd, err_cd = two_diff(c, d)
    return (s_ab - s_cd) + (err_ab - err_cd)


@triton.jit
def pivot_of(x, is_pivot, AXIS: tl.constexpr):
    """The pivot row of x (rows along AXIS, is_pivot broadcast against x), as a size-1 axis."""
    return tl.sum(tl.where(is_pivot, x, 0.0), axis=AXIS, keep_dims=True)


@triton.jit
def invalid_rows_as_pivot(x, valid, is_pivot):
    """Tile x [K_PAD, BLOCK_V] with every row that is not valid replaced by the pivot row."""
    return tl.where(valid[:, None], x, pivot_of(x, is_pivot[:, None], 0))


@triton.jit
def mixed_minus_inf(x, valid, n_true):
    """Per column of a tile: 1 where -inf holds in some valid rows but not all (the loss is
    +inf), else 0. (NaN and +inf need no flag: they reach every sum through delta.)"""
    minus_inf = tl.sum((valid[:, None] & (x == float("-inf"))).to(tl.int32), axis=0)
    return ((minus_inf > 0) & (minus_inf < n_true)).to(tl.int32)


@triton.jit
def column_terms(x, mx, is_pivot, n, inv_t):
    """(e_r [1, BLOCK_V], e, b, q~ [K_PAD, BLOCK_V]) of a float32 tile x whose invalid rows are
    the pivot's, with row maxima mx [K_PAD]. A column at -inf in every row has e = q~ = 0."""
    x_r = pivot_of(x, is_pivot[:, None], 0)
    mx_r = pivot_of(mx, is_pivot, 0)
    delta = difference_of_differences(x, x_r, mx[:, None], mx_r[:, None]) * inv_t
    b = delta - tl.sum(delta, axis=0, keep_dims=True) / n
    e_r = tl.exp((x_r - mx_r[:, None]) * inv_t)
    e = tl.exp((x - mx[:, None]) * inv_t)
    q = tl.where(tl.abs(delta) < SERIES_LIMIT, e_r * expm1_series(delta), e - e_r)
    return e_r, e, b, q


@triton.jit
def growth_factors(mx, mx_new, is_pivot, n, inv_t, AXIS: tl.constexpr):
    """(s, s_r, gap, beta) that move the sums from maxima mx to mx_new (rows along AXIS):
    with Delta_i = (mx_new_i - mx_i) / T, s_i = exp(-Delta_i), gap_i = s_i - s_r
    = s_r expm1(Delta_r - Delta_i) and beta_i = (Delta_i - Delta_r) centred over the rows,
    the amount by which every b_i drops."""
    mx_r = pivot_of(mx, is_pivot, AXIS)
    mx_new_r = pivot_of(mx_new, is_pivot, AXIS)
    rel = difference_of_differences(mx_new, mx_new_r, mx, mx_r) * inv_t
    beta = rel - tl.sum(rel, axis=AXIS, keep_dims=True) / n
    s = tl.exp((mx - mx_new) * inv_t)
    s_r = tl.exp((mx_r - mx_new_r) * inv_t)
    gap = tl.where(tl.abs(rel) < SERIES_LIMIT, s_r * expm1_series(-rel), s - s_r)
    return s, s_r, gap, beta


@triton.jit
def rescaled(d_r, D, B, F, C, s, s_r, gap, beta):
    """The sums after the maxima grow (all shapes broadcast): e_r -> s_r e_r, e_i -> s_i e_i,
    q~_i -> s_i q~_i + gap_i e_r, b_i -> b_i - beta_i."""
    b_sum = B - beta * d_r
    return (s_r * d_r, s * D + gap * d_r, s_r * b_sum, s * (F - beta * D) + gap * b_sum,
            s * (C - beta * (d_r + D)))


@triton.jit
def row_terms(d_r, D, B, F, C, valid, n):
    """(S, rho, mean_b) of a group from its sums (d_r a scalar; D, B, F, C [K_PAD]), with
    d_i = d_r + D_i, rho_i = D_i / d_r, mean_b_i = C_i / d_i = <p_i, b_i> and
    S = k sum_i (F_i - D_i B_i / d_r) / d_i."""
    cov = tl.where(valid, (F - D * (B / d_r)) / (d_r + D), 0.0)
    return n * tl.sum(cov, axis=0), D / d_r, C / (d_r + D)


@triton.jit
def score_gradient(e, b, q, e_r, inv_d_r, rho, mean_b, valid, n):
    """dS/dy [K_PAD, BLOCK_V] = k (p_i t_i + q_i) - sum_j q_j, with p_i = e_i / d_i,
    q_i = p_i - p_r = (q~_i / d_r - p_r rho_i) / (1 + rho_i), p_r = e_r / d_r and
    t_i = eps_i - c_i = b_i - <p_i, b_i>: design.md's k [p_r t_i + q_i (1 + t_i)] - sum_j q_j with
    p_r t_i + q_i t_i taken as p_i t_i, so every term is as small as the gradient when the rows
    are close and none cancels another when they are far apart (p_i = 0 where p_r = 1)."""
    p_r = e_r * inv_d_r
    inv_ratio = (1.0 / (1.0 + rho))[:, None]
    q_p = tl.where(valid[:, None], (q * inv_d_r - p_r * rho[:, None]) * inv_ratio, 0.0)
    p = e * inv_d_r * inv_ratio
    return n * (p * (b - mean_b[:, None]) + q_p) - tl.sum(q_p, axis=0, keep_dims=True)
