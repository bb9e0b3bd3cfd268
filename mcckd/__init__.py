"""mcckd: Multi-CoT Consistent Knowledge Distillation (MCC-KD) with fused Triton kernels."""
from mcckd.ops import MCCKDLoss, PairwiseSymKL, fused_linear_mcc_loss, pairwise_sym_kl

__version__ = "0.1.0"
__all__ = ["MCCKDLoss", "PairwiseSymKL", "fused_linear_mcc_loss", "pairwise_sym_kl", "__version__"]
