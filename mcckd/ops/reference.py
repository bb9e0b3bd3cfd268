"""Plain-PyTorch references: the specification of every fused op, and the CPU path.

Pairwise symmetric KL (see DESIGN.md). For a group g with K rows of logits x_i [V], scaled
y_i = x_i / T, log-probabilities l_i = log_softmax(y_i) and p_i = exp(l_i):

    S_g = sum_{i<j} KL(p_i||p_j) + KL(p_j||p_i) = K * sum_i <p_i, l_i - lbar>,  lbar = mean_i l_i

summed over the valid rows only (K = k_g of them). Centring on lbar keeps the small differences
between near-identical distributions instead of subtracting two large sums. The group loss is
L_g = S_g / (k_g (k_g - 1)), the mean over pairs of half the symmetric KL; groups with k_g < 2
give 0 and are left out of the mean.
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
    row_weight = valid.to(compute_dtype).unsqueeze(-1)  # [G, K, 1]
    k = row_weight.sum(dim=1)  # [G, 1]

    y = logits.to(compute_dtype) / temperature
    # Invalid rows may hold anything: give them a harmless distribution, then weight 0.
    y = torch.where(valid.unsqueeze(-1), y, torch.zeros_like(y))
    logp = torch.log_softmax(y, dim=-1)
    p = logp.exp()

    # sum(logp * w) over rows: -inf where any valid row is -inf (then the KL is +inf, or,
    # for a column at -inf in every row, a padded vocabulary, p = 0 and nothing at all).
    lbar = (logp * row_weight).sum(dim=1, keepdim=True) / k.clamp(min=1).unsqueeze(-1)
    # Keep -inf - (-inf) = nan out of the arithmetic and out of the gradient where p = 0.
    centred = torch.where(p > 0, logp - lbar, torch.zeros_like(logp))
    inner = (p * centred).sum(dim=-1)  # [G, K]
    s = k.squeeze(-1) * (inner * row_weight.squeeze(-1)).sum(dim=1)  # [G]

    pairs = k.squeeze(-1) * (k.squeeze(-1) - 1)
    has_pairs = pairs > 0
    group_loss = torch.where(has_pairs, s / pairs.clamp(min=1), torch.zeros_like(s))
    return reduce_group_losses(group_loss, has_pairs, reduction)


def reduce_group_losses(group_loss, has_pairs, reduction):
    """Reduce per-group losses [G]: "mean" over groups with pairs (0 when none), "sum", "none"."""
    if reduction == "none":
        return group_loss
    if reduction == "sum":
        return group_loss.sum()
    return group_loss.sum() / has_pairs.sum().clamp(min=1).to(group_loss.dtype)
