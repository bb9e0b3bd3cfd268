"""Fused kernels and their plain-PyTorch references."""
from mcckd.ops.linear_mcc import MCCKDLoss, fused_linear_mcc_loss
from mcckd.ops.pairwise_kl import PairwiseSymKL, pairwise_sym_kl
from mcckd.ops.reference import fused_linear_mcc_reference, pairwise_sym_kl_reference

__all__ = [
    "MCCKDLoss", "PairwiseSymKL", "fused_linear_mcc_loss", "fused_linear_mcc_reference", "pairwise_sym_kl",
    "pairwise_sym_kl_reference",
]
