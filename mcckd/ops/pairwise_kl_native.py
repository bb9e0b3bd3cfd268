"""pairwise_sym_kl on the native CPU kernels (kernels/cpu/pairwise_kl_*.cpp).

The forward returns each group's loss L_g and O(G K) statistics per valid row (max, D_i / d_r,
d_i, c_i, centred lambda_i); the backward reads the logits once more and forms
dL/dx_i = grad_g (k [p_r (eps_i - c_i) + q_i (1 + eps_i - c_i)] - sum_j q_j) / (T k (k - 1))
from differences to the pivot row (docs/design.md, "Precision: differences to a pivot row").
Logits of any strides, float32/bfloat16/float16 (float32 sums) or float64.
"""
import torch

from mcckd.ops.native import require_native
from mcckd.ops.reference import reduce_group_losses

require_native()


class PairwiseSymKLNativeFunction(torch.autograd.Function):
    """Group losses [G] of logits [G, K, V] (valid [G, K] or None), temperature T."""

    @staticmethod
    def forward(ctx, logits, valid, temperature):
        group_loss, stats = torch.ops.mcckd.native_pairwise_kl_forward(logits, valid, temperature)
        ctx.save_for_backward(logits, valid, group_loss, stats)
        ctx.temperature = temperature
        return group_loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_group):
        logits, valid, group_loss, stats = ctx.saved_tensors
        grad = torch.ops.mcckd.native_pairwise_kl_backward(
            grad_group.to(group_loss.dtype), logits, valid, group_loss, stats, ctx.temperature)
        return grad, None, None


def pairwise_sym_kl_native(logits, valid, temperature, reduction):
    """pairwise_sym_kl's value for backend "native" (arguments already checked)."""
    G, K, _ = logits.shape
    group_loss = PairwiseSymKLNativeFunction.apply(logits, valid, temperature)
    if valid is None:
        has_pairs = torch.full((G,), K >= 2, dtype=torch.bool, device=logits.device)
    else:
        has_pairs = valid.sum(dim=1) >= 2
    return reduce_group_losses(group_loss, has_pairs, reduction)
