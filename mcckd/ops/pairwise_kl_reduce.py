"""The reduction over groups of the Triton path of `pairwise_sym_kl`: one program adds the
per-group losses and counts the groups with pairs, so "mean" and "sum" cost one launch and no
host sync."""
import torch
import triton
import triton.language as tl

from mcckd.ops.launch import valid_mask_args


@triton.jit
def _pairwise_kl_reduce_kernel(
    loss_ptr, valid_ptr, out_ptr, scale_ptr, G, K, stride_valid_g, stride_valid_k,
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
            offsets = groups.to(tl.int64)[:, None] * stride_valid_g + rows[None, :] * stride_valid_k
            flags = tl.load(valid_ptr + offsets, mask=group_in[:, None] & (rows < K)[None, :], other=0)
            n = tl.sum((flags != 0).to(tl.float32), axis=1)
        else:
            n = tl.where(group_in, K * 1.0, 0.0)
        groups_with_pairs += tl.where(n >= 2.0, 1.0, 0.0)
    if MEAN:
        scale = 1.0 / tl.maximum(tl.sum(groups_with_pairs, axis=0), 1.0)
    else:
        scale = 1.0
    tl.store(out_ptr, tl.sum(total, axis=0) * scale)
    tl.store(scale_ptr, scale)


def reduce_group_loss(group_loss, valid, K, mean):
    """(loss, scale): loss = scale * sum of group_loss [G], scale = 1 / (groups with pairs) for
    `mean`, else 1; both float32 scalars computed on the device, in one launch."""
    G = group_loss.shape[0]
    out = torch.empty(2, dtype=torch.float32, device=group_loss.device)
    k_pad = triton.next_power_of_2(K)
    valid_arg, stride_valid_g, stride_valid_k, has_valid = valid_mask_args(valid, out)
    _pairwise_kl_reduce_kernel[(1,)](
        group_loss if G > 0 else out, valid_arg if G > 0 else out, out[0:], out[1:], G, K,
        stride_valid_g, stride_valid_k,
        K_PAD=k_pad, BLOCK_G=max(16, min(1024, 4096 // k_pad)), HAS_VALID=has_valid, MEAN=mean,
    )
    return out[0], out[1:]
