"""The torch backend of `pairwise_sym_kl`: the pivot-difference formulation of docs/design.md
("Precision: differences to a pivot row"), vectorised over [G, K, V].

As the Triton launchers: `pairwise_kl_forward_torch(logits, valid, inv_t)` gives (group_loss [G],
stats [4, G, K]) and `pairwise_kl_backward_torch(logits, valid, inv_t, group_loss, stats,
grad_group)` the gradient [G, K, V] in logits' dtype, with grad_group = dLoss/dL_g [G]. Both
compute in float32 (float64 for float64 logits) with a few [G, K, V] temporaries, read logits
through any strides, and never read an invalid row.

Group g, valid rows i (k of them), pivot r (the first valid row), row maxima M_i of x_i:

    u_i = (x_i - M_i) / T,  e_i = exp(u_i),  delta_i = ((x_i - x_r) - (M_i - M_r)) / T
    b_i = delta_i - mean_j delta_j,  q~_i = e_r expm1(delta_i)  (|delta_i| < 1/2; else e_i - e_r)
    d_r = sum_v e_r,  D_i = sum_v q~_i,  B_i = sum_v e_r b_i,  H_i = sum_v q~_i b_i - D_i B_i / d_r
    S = k sum_i H_i / d_i  (d_i = d_r + D_i),   L_g = S / (k (k - 1))  (0 when k < 2)

and, with p_r = e_r / d_r, q_k = p_k - p_r = (q~_k - e_r D_k / d_r) / d_k and
eps_k - c_k = (b_k - B_k / d_r) - H_k / d_k (the centred log-ratio less its mean under p_k),

    dS/dy_k = k [p_r (eps_k - c_k) + q_k (1 + eps_k - c_k)] - sum_j q_j,   dS/dx_k = dS/dy_k / T

where |delta_k| < 1/2; elsewhere the bracket is p_k (1 + eps_k - c_k) - p_r with p_k = e_k / d_k
(rows far apart: p_r + q_k would keep p_k only to ulp(p_r), which |eps_k - c_k| >> 1 magnifies).

Every term is as small as the result, so near-identical rows keep relative precision; the
difference to the pivot is formed exactly (two-sum) even when rows are shifted by large
constants. Measured against the float64 definition on the same float32 inputs (G=4, K=4,
V=4099, rows = a shared row + eps * noise, logit scales 1 and 30, T = 1 and 1.7): relative error
of loss and gradient <= 3.4e-7 for eps = 1e-3, 1e-4 and 1e-5 (the direct formulas of
`reference.py`: gradient 1.3e-2 to 1.4 at scale 1); rows also shifted by constants of std 30:
<= 3.6e-7. bf16/fp16 inputs: the loss to ~1e-7, the gradient to its rounding to the dtype,
also for logits up to 1e30 (one-hot distributions, tests/ops/test_pairwise_kl.py).
CPU time of forward + backward: ~2.3x that of `reference.py` (G=32, K=4, V=32000, one thread).

Edge cases (design.md, "Edge cases"): NaN or +inf in a valid row makes the group loss NaN
and its gradient NaN; a column at -inf in some valid rows but not all makes it +inf with a NaN
gradient; a column at -inf in every valid row contributes nothing (gradient exactly 0 there).
"""
import torch

# stats rows: d_r (repeated over the rows), D_i, B_i, H_i; [STATS, G, K]
STATS = 4


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _valid_rows(logits, valid):
    """valid [G, K] bool (all rows when None), valid rows per group k [G] in the compute dtype."""
    G, K, _ = logits.shape
    if valid is None:
        valid = torch.ones(G, K, dtype=torch.bool, device=logits.device)
    return valid, valid.sum(dim=1).to(_compute_dtype(logits.dtype))


def _pivot(t, first):
    """Row `first[g]` of t [G, K, W] as [G, 1, W]."""
    return t.gather(1, first[:, None, None].expand(-1, 1, t.shape[-1]))


def _difference(a, b):
    """(s, err) with s + err = a - b exactly (Knuth's two-sum): rows shifted by large
    constants keep the small part of their difference to the pivot."""
    s = a - b
    back = s - a
    return s, (a - (s - back)) - (b + back)


def _columns(logits, valid, k, inv_t):
    """Per-column terms of every row: (x, e_r [G, 1, V], b, q~, e, near) with b, q~, e and near
    (|delta| < 1/2) [G, K, V], b and q~ 0 on invalid rows; x is logits in the compute dtype,
    0 on invalid rows."""
    dtype = _compute_dtype(logits.dtype)
    rows = valid[:, :, None]
    x = torch.where(rows, logits.to(dtype), 0.0)
    row_max = x.amax(dim=-1, keepdim=True)
    first = valid.to(torch.int8).argmax(dim=1)
    x_r, max_r = _pivot(x, first), _pivot(row_max, first)
    u = (x - row_max) * inv_t
    e_r = _pivot(u, first).exp_()
    # -inf in both x and x_r (a column at -inf in every row) gives a difference of 0.
    dead = (x == -torch.inf) | (x_r == -torch.inf)
    (dx, dx_err), (dm, dm_err) = _difference(x, x_r), _difference(row_max, max_r)
    delta = torch.where(rows & ~dead, ((dx - dm) + (dx_err - dm_err)) * inv_t, 0.0)
    b = delta - (delta.sum(dim=1, keepdim=True) / k.clamp(min=1)[:, None, None])
    near = delta.abs() < 0.5
    e = u.exp_()
    q = torch.where(near, e_r * torch.expm1(delta), e - e_r)
    return x, e_r, torch.where(rows, b, 0.0), torch.where(rows, q, 0.0), e, near


def _non_finite_groups(x, valid, k):
    """(bad [G]: NaN or +inf in a valid row, mixed [G]: a column at -inf in some valid rows
    but not all) of x [G, K, V] (0 on invalid rows)."""
    bad = (x.isnan() | x.isposinf()).flatten(1).any(dim=1)
    at_minus_inf = x.isneginf().sum(dim=1)
    mixed = ((at_minus_inf > 0) & (at_minus_inf < k[:, None])).any(dim=1)
    return bad, mixed


def pairwise_kl_forward_torch(logits, valid, inv_t):
    """(group_loss [G], stats [STATS, G, K]) in the compute dtype; see the module docstring."""
    valid, k = _valid_rows(logits, valid)
    x, e_r, b, q, _, _ = _columns(logits, valid, k, inv_t)
    d_r = e_r.sum(dim=-1)  # [G, 1]
    D = q.sum(dim=-1)
    B = (e_r * b).sum(dim=-1)
    H = (q * b).sum(dim=-1) - D * B / d_r
    S = k * torch.where(valid, H / (d_r + D), 0.0).sum(dim=1)
    pairs = k * (k - 1)
    bad, mixed = _non_finite_groups(x, valid, k)
    loss = torch.where(mixed, torch.inf, S / pairs.clamp(min=1))
    loss = torch.where(bad, torch.nan, loss)
    loss = torch.where(pairs > 0, loss, 0.0)
    stats = torch.stack([d_r.expand_as(D), D, B, H])
    return loss, stats


def pairwise_kl_backward_torch(logits, valid, inv_t, group_loss, stats, grad_group):
    """d(sum_g grad_group[g] L_g) / d logits [G, K, V] in logits' dtype; 0 on invalid rows,
    NaN on the valid rows of groups whose loss is not finite."""
    valid, k = _valid_rows(logits, valid)
    _, e_r, b, q, e, near = _columns(logits, valid, k, inv_t)
    d_r, D, B, H = stats[:, :, :, None].to(e_r.dtype).unbind(0)
    d = d_r + D
    q = (q - e_r * (D / d_r)) / d
    gap = (b - B / d_r) - H / d  # eps_k - c_k
    p_r = e_r / d_r
    # p_k (1 + gap) - p_r: from the differences where the rows are close, else directly (far
    # apart, p_r + q_k would round p_k off to ulp(p_r) before |gap| >> 1 multiplies it).
    own = torch.where(near, p_r * gap + q * (1.0 + gap), e / d * (1.0 + gap) - p_r)
    ds = k[:, None, None] * own - q.sum(dim=1, keepdim=True)
    pairs = k * (k - 1)
    coef = grad_group.to(ds.dtype) * inv_t / pairs.clamp(min=1)
    grad = torch.where(torch.isfinite(group_loss)[:, None, None], ds * coef[:, None, None], torch.nan)
    keep = valid[:, :, None] & (pairs > 0)[:, None, None]
    return torch.where(keep, grad, 0.0).to(logits.dtype)
