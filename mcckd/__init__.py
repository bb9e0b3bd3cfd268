"""mcckd: Multi-CoT Consistent Knowledge Distillation (MCC-KD) with fused Triton kernels."""
from mcckd.ops import PairwiseSymKL, pairwise_sym_kl

__version__ = "0.1.0"
__all__ = ["PairwiseSymKL", "pairwise_sym_kl", "__version__"]
