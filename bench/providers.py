"""The implementations compared by the benchmarks, each as loss = f(logits) or f(hidden, ...)."""
import functools

import torch

from mcckd.ops import pairwise_sym_kl
from mcckd.ops.reference import pairwise_sym_kl_reference


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


@functools.lru_cache(maxsize=None)
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
