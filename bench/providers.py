"""The implementations compared by the benchmarks, each as loss = f(logits) or f(hidden, ...)."""
import functools

import torch

from mcckd.ops import fused_linear_mcc_loss, fused_linear_mcc_reference, pairwise_sym_kl
from mcckd.ops.reference import pairwise_sym_kl_reference

# Consistency weight of the linear_mcc benchmarks (the paper's).
ALPHA = 0.1


def liger_pairwise_kl():
    """Liger-Kernel's KL divergence applied to every ordered pair, or None if not installed.

    sum_{i != j} KL(p_j||p_i) = sum_{i<j} D_ij; "batchmean" and / (K (K - 1)) give our mean.
    """
    try:
        from liger_kernel.transformers.kl_div import LigerKLDIVLoss
    except ImportError:
        return None
    kl = LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def loss(logits):
        K = logits.shape[1]
        logp = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1).contiguous()  # [K, G, V]
        total = sum(kl(logp[i], logp[j]) for i in range(K) for j in range(K) if i != j)
        return total / (K * (K - 1))

    return loss


@functools.cache
def compiled_pairwise_reference():
    return torch.compile(pairwise_sym_kl_reference)


def pairwise_providers(on_cuda):
    """name -> loss(logits) for every provider available here."""
    providers = {
        "torch": pairwise_sym_kl_reference,
        "torch_compile": lambda logits: compiled_pairwise_reference()(logits),
    }
    if on_cuda:
        providers["mcckd"] = functools.partial(pairwise_sym_kl, backend="triton")
        liger = liger_pairwise_kl()
        if liger is not None:
            providers["liger"] = liger
    return providers


def answer_kl(hidden, weight, answer_index):
    """The consistency term for peers that fuse only the cross-entropy: the answer rows'
    logits [G, K, V] by a plain matmul in the input dtype, then our pairwise kernel."""
    return pairwise_sym_kl(hidden[answer_index.clamp(min=0)] @ weight.T, answer_index >= 0)


def with_answer_kl(linear_cross_entropy):
    """loss(hidden, weight, labels, answer_index) = CE + ALPHA * answer_kl."""
    def loss(hidden, weight, labels, answer_index):
        return linear_cross_entropy(hidden, weight, labels) + ALPHA * answer_kl(hidden, weight, answer_index)

    return loss


def liger_linear_cross_entropy():
    """Liger-Kernel's fused linear cross-entropy (its defaults), or None if not installed."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    ce = LigerFusedLinearCrossEntropyLoss()
    return lambda hidden, weight, labels: ce(weight, hidden, labels)


def cce_linear_cross_entropy():
    """Apple's cut-cross-entropy (its defaults, gradient filtering included), or None if not installed."""
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        return None
    return linear_cross_entropy


def linear_mcc_providers(on_cuda):
    """name -> loss(hidden, weight, labels, answer_index) for every provider available here."""
    providers = {
        "mcckd": lambda h, w, y, a: fused_linear_mcc_loss(h, w, y, a, alpha=ALPHA).loss,
        "torch": lambda h, w, y, a: fused_linear_mcc_reference(h, w, y, a, alpha=ALPHA)[0],
    }
    if on_cuda:
        for name, linear_cross_entropy in (
            ("liger", liger_linear_cross_entropy()),
            ("cce", cce_linear_cross_entropy()),
        ):
            if linear_cross_entropy is not None:
                providers[name] = with_answer_kl(linear_cross_entropy)
    return providers
