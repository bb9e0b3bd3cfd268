"""Plain-PyTorch references: the specification of every fused op, written from the direct
formulas and differentiated by autograd (the torch backend of `pairwise_sym_kl` is
`pairwise_kl_torch.py`, which keeps relative precision where these lose it).

Pairwise symmetric KL (docs/design.md, "The consistency loss"). For a group g with K rows of
logits x_i [V], scaled y_i = x_i / T, log-probabilities l_i = log_softmax(y_i) and p_i = exp(l_i):

    S_g = sum_{i<j} KL(p_i||p_j) + KL(p_j||p_i) = K * sum_i <p_i, l_i - lbar>,  lbar = mean_i l_i

summed over the valid rows only (K = k_g of them). The group loss is L_g = S_g / (k_g (k_g - 1)),
the mean over pairs of half the symmetric KL; groups with k_g < 2 give 0 and are left out of
the mean. On rows 1e-3 apart the gradient here is off by ~1e-2 relative in float32 (the
maximum is not detached and O(1) terms cancel: 1.3e-2 measured at logit scale 1).
"""
import torch

REDUCTIONS = ("mean", "sum", "none")


def pairwise_sym_kl_reference(logits, valid=None, temperature=1.0, reduction="mean"):
    """All-pairs symmetric KL of logits [G, K, V] with rows masked by valid [G, K].

    Computes in float32 (float64 for float64 input); returns a scalar, or [G] for "none".
    """
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    G, K, _ = logits.shape
    if valid is None:
        valid = torch.ones(G, K, dtype=torch.bool, device=logits.device)
    k = valid.sum(dim=1, keepdim=True).to(compute_dtype)  # [G, 1]

    y = logits.to(compute_dtype) / temperature
    # Invalid rows may hold anything (nan): give them a harmless distribution, then weight 0.
    y = torch.where(valid.unsqueeze(-1), y, torch.zeros_like(y))
    # l_i = (y_i - m_i) - log d_i: y_i - m_i is exact near the max, where p matters, and the
    # centred l_i - lbar is formed from centred parts without ever rounding l_i itself.
    shifted = y - y.amax(dim=-1, keepdim=True)
    log_d = torch.logsumexp(shifted, dim=-1, keepdim=True)
    p = torch.exp(shifted - log_d)
    centred = centre_over_valid_rows(shifted, valid, k) - centre_over_valid_rows(log_d, valid, k)
    # Keep -inf - (-inf) = nan out of the arithmetic and out of the gradient where p = 0.
    centred = torch.where(p > 0, centred, torch.zeros_like(centred))
    inner = torch.where(valid, (p * centred).sum(dim=-1), 0.0)  # [G, K]
    s = k.squeeze(-1) * inner.sum(dim=1)  # [G]

    pairs = k.squeeze(-1) * (k.squeeze(-1) - 1)
    has_pairs = pairs > 0
    group_loss = torch.where(has_pairs, s / pairs.clamp(min=1), torch.zeros_like(s))
    return reduce_group_losses(group_loss, has_pairs, reduction)


def centre_over_valid_rows(x, valid, k):
    """x [G, K, V] minus its mean over the valid rows, as (x - x_0) - mean_j (x_j - x_0).

    Around a pivot row x_0 (the first valid one), nearly equal rows give differences that are
    exact, so the small centred value keeps its precision. A column at -inf in some valid rows
    gives +inf in the others (an infinite KL), and nan where every row is -inf (p = 0 there).
    """
    first_valid = valid.to(torch.int8).argmax(dim=1)  # [G]
    pivot = x.gather(1, first_valid[:, None, None].expand(-1, 1, x.shape[-1]))
    pivot = torch.where(torch.isfinite(pivot), pivot, 0.0)
    diff = x - pivot
    mean_diff = torch.where(valid.unsqueeze(-1), diff, 0.0).sum(dim=1, keepdim=True) / k.clamp(
        min=1
    ).unsqueeze(-1)
    return diff - mean_diff


def reduce_group_losses(group_loss, has_pairs, reduction):
    """Reduce per-group losses [G]: "mean" over groups with pairs (0 when none), "sum", "none"."""
    if reduction == "none":
        return group_loss
    if reduction == "sum":
        return group_loss.sum()
    return group_loss.sum() / has_pairs.sum().clamp(min=1).to(group_loss.dtype)


def fused_linear_mcc_reference(hidden, weight, labels, answer_index, answer_valid=None, bias=None,
                               alpha=0.1, temperature=1.0, ignore_index=-100):
    """MCC-KD loss with materialised logits: the specification of `fused_linear_mcc_loss`.

    logits [N, V] = hidden @ weight.T + bias in hidden's dtype, as a model's lm_head computes
    them, then in float32 (float64 for float64 input):
        ce   = sum over targets != ignore_index of cross_entropy / max(their count, 1)
        kl   = pairwise_sym_kl_reference(logits[answer_index], valid), valid = (answer_index >= 0)
               & answer_valid, mean over groups with >= 2 valid rows
        loss = ce + alpha * kl
    Returns (loss, ce, kl), scalars.
    """
    compute_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = torch.nn.functional.linear(hidden, weight, bias).to(compute_dtype)
    targets = labels.long()
    n_targets = (targets != ignore_index).sum().clamp(min=1)
    ce = (
        torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
        / n_targets
    )
    valid = answer_index >= 0
    if answer_valid is not None:
        valid = valid & answer_valid
    kl = pairwise_sym_kl_reference(logits[answer_index.clamp(min=0)], valid, temperature, "mean")
    return ce + alpha * kl, ce, kl
