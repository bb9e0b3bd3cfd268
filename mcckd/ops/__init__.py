"""Fused kernels and their plain-PyTorch references."""
from mcckd.ops.pairwise_kl import PairwiseSymKL, pairwise_sym_kl
from mcckd.ops.reference import pairwise_sym_kl_reference

__all__ = ["PairwiseSymKL", "pairwise_sym_kl", "pairwise_sym_kl_reference"]
